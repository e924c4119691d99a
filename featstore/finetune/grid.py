"""Finetuning over label fractions and seeds, the run ids a grid makes, and the records a
store holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from featstore.data.manifest import Manifest
from featstore.errors import FinetuneError, ProbeError, retyped
from featstore.finetune.config import FinetuneConfig, FinetuneRecord, model_key
from featstore.models.registry import BackboneSpec
from featstore.runkeys import FINETUNE_RECORD_KEYS
from featstore.store.dataset import DatasetGroup
from featstore.store.feature_store import FeatureStore

if TYPE_CHECKING:
    from featstore.finetune.run import FinetuneProgress

# training (torch, timm) loads when a run is computed, not to key one (a pipeline's plan) or
# to read one back (results, report)


def finetune_grid(manifest: Manifest, specs: Sequence[BackboneSpec], config: FinetuneConfig, *,
                  store: FeatureStore, fractions: Sequence[float] = (1.0,),
                  seeds: int | Sequence[int] = 1, device: str = "cpu", num_workers: int = 0,
                  recompute: bool = False, progress: FinetuneProgress | None = None,
                  on_run: Callable[[list[FinetuneRecord]], None] | None = None,
                  on_error: str = "fail") -> list[FinetuneRecord]:
    """Every (backbone, fraction, seed) of the grid; finished runs are read back."""
    from dataclasses import replace

    from featstore.finetune.run import finetune_run

    seed_list = grid_seeds(fractions, seeds, device)
    out: list[FinetuneRecord] = []
    for spec in specs:
        for fraction in fractions:
            for seed in seed_list:
                recs = finetune_run(manifest, spec, replace(config, fraction=fraction,
                                                            seed=seed),
                                    store=store, device=device, num_workers=num_workers,
                                    recompute=recompute, progress=progress,
                                    on_error=on_error)
                if on_run:
                    on_run(recs)
                out.extend(recs)
    return out


def finetune_run_ids(spec: BackboneSpec, weights_sha256: str, preprocessing: dict[str, Any],
                     val_source: str, config: FinetuneConfig, *,
                     fractions: Sequence[float] = (1.0,),
                     seeds: int | Sequence[int] = 1) -> list[str]:
    """The ids the runs of a :func:`finetune_grid` of one backbone are persisted under,
    training nothing (a planner asks the store which are there). ``weights_sha256`` and
    ``preprocessing``: the loaded backbone's; ``val_source``: as
    :func:`featstore.data.fractions.val_source` says for the dataset."""
    from dataclasses import replace

    mkey = model_key(spec, weights_sha256, preprocessing)
    return [replace(config, fraction=f, seed=s).run_id(mkey, val_source)
            for f in fractions for s in grid_seeds(fractions, seeds)]


def grid_seeds(fractions: Sequence[float], seeds: int | Sequence[int],
               device: str = "cpu") -> list[int]:
    """The seeds of a fractions x seeds grid, checked (with the device) as the probes'
    grid is."""
    from featstore.probe.run import check_grid

    try:
        return check_grid(fractions, seeds, device)
    except ProbeError as e:
        raise retyped(e, FinetuneError) from None


def stored_finetune_records(ds: DatasetGroup) -> list[FinetuneRecord]:
    """Every finished finetuning run's records in a dataset group (no computation). An LP-FT
    run whose head an earlier linear solver fitted, or a binary run scored at the earlier
    0.5 threshold (its recipe is not the one its settings give today), is listed until the
    same run has been made again, then hidden, as probe and fusion runs are."""
    done = [run for run in ds.finetune_runs.all()
            if run.get("status") == "complete" and run.get("records")]
    made = {_same_run(run["records"][0]) for run in done}
    out = []
    for run in done:
        first = run["records"][0]
        cfg = first.get("config") or {}
        now = _current_recipe(cfg)
        if now not in (None, cfg.get("recipe")) and _same_run(first, now) in made:
            continue  # an earlier solver's or threshold's run, made again since
        out.extend(FinetuneRecord.from_stored(r) for r in run["records"])
    return out


def _same_run(record: dict[str, Any], recipe: str | None = None) -> tuple:
    """What two records of one finetuning run share (``recipe``: in place of its own)."""
    cfg = record.get("config") or {}
    return (cfg.get("model_key"), recipe or cfg.get("recipe"), record.get("fraction"),
            record.get("seed"), record.get("val_source"), record.get("train_ids_sha256"),
            record.get("n_excluded", 0))


def _current_recipe(cfg: dict[str, Any]) -> str | None:
    """The recipe a run's settings give today (an LP-FT run's: the current solver's; a binary
    run's: the current threshold rule's); None for another task's run from a fresh head
    (neither in it) or settings this version cannot read (a value it refuses, a setting it
    does not know: a newer featstore's run is never hidden)."""
    from dataclasses import fields

    if cfg.get("init_head") != "probe" and cfg.get("task") != "binary":
        return None
    known = {f.name for f in fields(FinetuneConfig)}
    if set(cfg) - known - FINETUNE_RECORD_KEYS:
        return None
    try:
        return FinetuneConfig(**{k: v for k, v in cfg.items() if k in known}).recipe()
    except (TypeError, ValueError):
        return None
