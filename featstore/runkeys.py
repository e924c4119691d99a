"""How runs are keyed and grouped: a run's id, and which runs are seeds of one row.

Plain data only (no torch): reading back persisted runs and rendering their tables imports
nothing heavy.
"""

from __future__ import annotations

import json
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


def variant_labels(configs: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """Labels for the variants (:func:`config_variant` -> configuration) of one row subject:
    none where there is one; else the settings that tell them apart (``dim=16``,
    ``l2_grid=[100]``, ``head v5`` for a DVME head's version), or ``~<variant>`` where that
    would be long, missing or shared by two."""
    if len(configs) < 2:
        return {v: "" for v in configs}
    kept = {v: {k: x for k, x in (c or {}).items() if k not in SEED_FIELDS}
            for v, c in configs.items()}
    keys = sorted({k for c in kept.values() for k in c})
    differ = [k for k in keys if len({_shown(k, c.get(k)) for c in kept.values()}) > 1]
    labels = {v: ", ".join(_shown(k, c.get(k)) for k in differ) for v, c in kept.items()}
    if (len(set(labels.values())) < len(labels)
            or any(not label or len(label) > 40 for label in labels.values())):
        return {v: f"~{v}" for v in configs}
    return labels


def _shown(key: str, value: Any) -> str:
    if value is None:
        return f"no {key}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if key == "method" and "@head-v" in text:  # dvme-softmax@head-v5: the head's version
        return "head v" + text.rpartition("@head-v")[2]
    return f"{key}={text}"


def run_id(config: dict[str, Any]) -> str:
    """Content key of a run: its configuration plus the featstore version."""
    return sha256_json({**config, "featstore": version("featstore")})[:RUN_ID_CHARS]
