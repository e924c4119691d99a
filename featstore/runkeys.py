"""How runs are keyed and grouped: a run's id, and which runs are seeds of one row.

Plain data only (no torch): reading back persisted runs and rendering their tables imports
nothing heavy.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
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


# fields of a finetuning record's config beside its recipe's settings (FinetuneConfig's):
# where, from what and with what outcome it ran (finetune.run writes them)
FINETUNE_RECORD_KEYS = frozenset({
    "backbone", "model_key", "layer", "weights_sha256", "preprocessing", "device",
    "world_size", "val_source", "versions", "recipe", "best_epoch", "history",
    "finetuned_sha256"})
# what a row label of the form ~<variant> is: said under every table that shows one
VARIANT_LEGEND = ("~<hash>: the short hash of a run's settings, where no setting tells two "
                  "rows apart in words ('featstore results --json' shows each run's config)")
_SHORT = 30  # a list whose text is longer is shortened where that still tells rows apart


def variant_labels(configs: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """Labels for the variants (:func:`config_variant` -> configuration) of one row subject:
    none where there is one; else, in words, the settings that tell them apart (``dim=16``,
    ``l2_grid=[100.0]`` beside ``l2_grid=default``, ``head v5`` for a DVME head's version; a
    long list as its ends and length where that still tells them apart), or ``~<variant>``
    (:data:`VARIANT_LEGEND`) where no setting does."""
    if len(configs) < 2:
        return {v: "" for v in configs}
    kept = {v: _settings(c) for v, c in configs.items()}
    keys = sorted({k for c in kept.values() for k in c})
    differ = [k for k in keys if len({_shown(k, c) for c in kept.values()}) > 1]
    for short in (True, False):
        labels = {v: ", ".join(_shown(k, c, short) for k in differ) for v, c in kept.items()}
        if len(set(labels.values())) == len(labels) and all(labels.values()):
            return labels
    return {v: f"~{v}" for v in configs}


def row_labeller(records: Iterable[Any], subject: Callable[[Any], tuple]
                 ) -> Callable[[Any], str]:
    """``label(record)``: :func:`variant_labels` of the record's configuration among the
    configurations of the records of its ``subject`` (the rest of its row's name)."""
    variants: dict[tuple, dict[str, Any]] = {}
    for r in records:
        variants.setdefault(subject(r), {})[config_variant(r.config)] = r.config
    labels = {s: variant_labels(configs) for s, configs in variants.items()}
    return lambda r: labels[subject(r)][config_variant(r.config)]


def _settings(config: dict[str, Any] | None) -> dict[str, Any]:
    """What a run's configuration says of its settings: neither its seed fields nor, for a
    finetuning run, where and how it went (:data:`FINETUNE_RECORD_KEYS`)."""
    config = config or {}
    drop = FINETUNE_RECORD_KEYS if "recipe" in config else ()
    return {k: v for k, v in config.items() if k not in SEED_FIELDS and k not in drop}


def _shown(key: str, config: dict[str, Any], short: bool = False) -> str:
    if key not in config:
        return f"no {key}"
    value = config[key]
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if key == "method" and "@head-v" in text:  # dvme-softmax@head-v5: the head's version
        return "head v" + text.rpartition("@head-v")[2]
    if isinstance(value, list | tuple) and _list_defaults().get(key) == text:
        return f"{key}=default"
    if short and isinstance(value, list | tuple) and len(text) > _SHORT:
        first, last = (json.dumps(v, default=str) for v in (value[0], value[-1]))
        text = f"[{first} .. {last}] ({len(value)} values)"
    return f"{key}={text}"


@functools.cache
def _list_defaults() -> dict[str, str]:
    """The probe's list settings at their defaults (``l2_grid``, ``ks``), as JSON text (the
    defaults ``ProbeConfig`` declares, from :mod:`featstore.choices`: this module sits below
    the probes)."""
    from featstore.choices import DEFAULT_KS, DEFAULT_L2_GRID

    return {"l2_grid": json.dumps(list(DEFAULT_L2_GRID)), "ks": json.dumps(list(DEFAULT_KS))}


def decision_rule(task: str) -> dict[str, str]:
    """What a run's configuration says of how its labels were decided: the threshold rule
    (:data:`featstore.choices.THRESHOLD_RULE`) for a binary task; nothing for the others,
    whose runs keep the ids they always had."""
    from featstore.choices import THRESHOLD_RULE

    return {"threshold": THRESHOLD_RULE} if task == "binary" else {}


def run_id(config: dict[str, Any]) -> str:
    """Content key of a run: its configuration plus the featstore version."""
    return sha256_json({**config, "featstore": version("featstore")})[:RUN_ID_CHARS]


def run_ids(*configs: dict[str, Any]) -> tuple[str, ...]:
    """The ids one run is found under: each configuration's :func:`run_id`, once, in order
    (the configuration it is stored under today, then how an earlier featstore keyed it)."""
    return tuple(dict.fromkeys(map(run_id, configs)))
