"""Finetuning over label fractions and seeds, the run ids a grid makes, and the records a
store holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from featstore.data.manifest import Manifest
from featstore.errors import FinetuneError, ProbeError
from featstore.finetune.config import FinetuneConfig, model_key
from featstore.finetune.run import FinetuneProgress, FinetuneRecord, finetune_run
from featstore.models.registry import BackboneSpec
from featstore.store.dataset import DatasetGroup
from featstore.store.feature_store import FeatureStore


def finetune_grid(manifest: Manifest, specs: Sequence[BackboneSpec], config: FinetuneConfig, *,
                  store: FeatureStore, fractions: Sequence[float] = (1.0,),
                  seeds: int | Sequence[int] = 1, device: str = "cpu", num_workers: int = 0,
                  recompute: bool = False, progress: FinetuneProgress | None = None,
                  on_run: Callable[[list[FinetuneRecord]], None] | None = None,
                  on_error: str = "fail") -> list[FinetuneRecord]:
    """Every (backbone, fraction, seed) of the grid; finished runs are read back."""
    from dataclasses import replace

    seed_list = grid_seeds(fractions, seeds)
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


def grid_seeds(fractions: Sequence[float], seeds: int | Sequence[int]) -> list[int]:
    """The seeds of a fractions x seeds grid, checked as the probes' grid is."""
    from featstore.probe.run import check_grid

    try:
        return check_grid(fractions, seeds)
    except ProbeError as e:
        raise FinetuneError(str(e)) from None


def stored_finetune_records(ds: DatasetGroup) -> list[FinetuneRecord]:
    """Every finished finetuning run's records in a dataset group (no computation)."""
    return [FinetuneRecord.from_stored(r) for run in ds.finetune_runs.all()
            if run.get("status") == "complete" for r in run.get("records", [])]
