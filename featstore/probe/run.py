"""Probe cached embeddings: train on train, choose L2 on val, score on test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from featstore.data.fractions import ids_sha256, select_fraction
from featstore.errors import ProbeError
from featstore.probe.linear import DEFAULT_L2_GRID, fit_with_validation
from featstore.probe.metrics import PRIMARY_METRIC, task_metrics
from featstore.store.zarr_store import Embeddings

VAL_CARVE_FRACTION = 0.2


@dataclass
class ProbeRecord:
    """One metric of one probe run on the test split."""

    dataset: str
    backbone: str
    key: str
    task: str
    metric: str
    value: float
    primary: bool
    fraction: float
    seed: int
    l2: float
    n_train: int
    n_val: int
    n_test: int
    val_source: str
    random_weights: bool
    train_ids_sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def probe_embeddings(emb: Embeddings, *, task: str, l2_grid: Sequence[float] = DEFAULT_L2_GRID,
                     fraction: float = 1.0, seed: int = 0,
                     device: str = "cpu") -> list[ProbeRecord]:
    """Linear-probe one embedding set on its dataset's official splits.

    ``fraction`` < 1 trains on a stratified, patient-grouped subset of train drawn with
    ``seed`` (:func:`featstore.data.fractions.select_fraction`); val and test stay whole.
    When the dataset has no val split, a stratified 20% of train (always drawn with seed 0,
    so every run chooses L2 on the same rows) is held out, and the records say so.

    Raises
    ------
    ProbeError
        No train or test rows, a single class in train, non-finite embeddings.
    """
    y = emb.labels if task == "multilabel" else emb.labels[:, 0]
    tr = np.flatnonzero(emb.split == "train")
    va = np.flatnonzero(emb.split == "val")
    te = np.flatnonzero(emb.split == "test")
    for name, rows in (("train", tr), ("test", te)):
        if len(rows) == 0:
            raise ProbeError(f"{emb.dataset}: no rows in split {name!r}")
    val_source = "val split"
    if len(va) == 0:
        strat = y[tr] if task != "multilabel" else None
        tr, va = train_test_split(tr, test_size=VAL_CARVE_FRACTION, random_state=0,
                                  stratify=strat)
        val_source = f"{VAL_CARVE_FRACTION:.0%} of train (seed 0)"
    tr = select_fraction(tr, emb.labels, emb.group, fraction, seed)
    sweep = fit_with_validation(emb.X[tr], y[tr], emb.X[va], y[va], task=task, l2_grid=l2_grid,
                                device=device)
    metrics = task_metrics(task, y[te], sweep.probe.predict_proba(emb.X[te]))
    random_weights = bool(emb.attrs.get("provenance", {}).get("random_weights", False))
    return [
        ProbeRecord(dataset=emb.dataset, backbone=emb.alias, key=emb.key, task=task, metric=m,
                    value=v, primary=m == PRIMARY_METRIC[task], fraction=fraction, seed=seed,
                    l2=sweep.l2, n_train=len(tr), n_val=len(va), n_test=len(te),
                    val_source=val_source, random_weights=random_weights,
                    train_ids_sha256=ids_sha256(emb.ids[tr]))
        for m, v in metrics.items()
    ]
