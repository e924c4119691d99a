"""How runs are keyed and grouped: a run's id, and which runs are seeds of one row.

Plain data only (no torch): reading back persisted runs and rendering their tables imports
nothing heavy.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from featstore._hashing import sha256_json

RUN_ID_CHARS = 24

# fields of a run's configuration that make it another seed of the same row, not another row
SEED_FIELDS = ("fraction", "seed", "n_bootstrap", "versions")


def config_variant(config: dict[str, Any] | None) -> str:
    """Short hash of what distinguishes a run's configuration beside fraction, seed and
    bootstrap count: runs of one variant are the seeds of one results row; runs of two
    variants (another l2 grid, decoding, DVME width, recipe) are never averaged together."""
    config = config or {}
    if "recipe" in config:  # a finetuning run: its recipe is its configuration (the rest of
        return str(config["recipe"])  # its record is outcome: history, best epoch)
    return sha256_json({k: v for k, v in config.items() if k not in SEED_FIELDS})[:6]


def run_id(config: dict[str, Any]) -> str:
    """Content key of a run: its configuration plus the featstore version."""
    return sha256_json({**config, "featstore": version("featstore")})[:RUN_ID_CHARS]
