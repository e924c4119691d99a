"""Probe cached embeddings: train on (a fraction of) train, choose on val, score on test.

Every run is keyed by the sha256 of its full configuration (embedding key, probe, task,
fraction, seed, grid, tolerance, bootstrap, featstore version) and persisted in the store
next to the embeddings, so a run is reproducible alone and is never computed twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from featstore._hashing import sha256_json
from featstore.data.fractions import ids_sha256, select_fraction
from featstore.errors import ProbeError
from featstore.probe.knn import DEFAULT_KS, knn_with_validation
from featstore.probe.linear import DEFAULT_L2_GRID, DEFAULT_TOL, fit_with_validation
from featstore.probe.metrics import PRIMARY_METRIC, bootstrap_ci, task_metrics
from featstore.probe.ordinal import decode, expected_grade, fit_thresholds
from featstore.store.zarr_store import Embeddings, EmbeddingSet

VAL_CARVE_FRACTION = 0.2
PROBES = ("linear", "knn")
ORDINAL_DECODES = ("argmax", "expected")


@dataclass(frozen=True)
class ProbeConfig:
    """Everything that determines a probe run's numbers besides the embeddings."""

    probe: str = "linear"
    task: str = "binary"
    fraction: float = 1.0
    seed: int = 0
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    ks: tuple[int, ...] = DEFAULT_KS
    tol: float = DEFAULT_TOL
    max_iter: int = 500
    n_bootstrap: int = 1000
    ordinal_decode: str = "argmax"

    def run_id(self, embedding_key: str) -> str:
        """Content key of a run: the config, the embeddings and the featstore version."""
        return sha256_json({"config": asdict(self), "embedding_key": embedding_key,
                            "featstore": version("featstore")})[:24]


@dataclass
class ProbeRecord:
    """One metric of one probe run on the test split."""

    dataset: str
    backbone: str
    key: str
    task: str
    probe: str
    metric: str
    value: float
    primary: bool
    ci_low: float
    ci_high: float
    fraction: float
    seed: int
    hyperparameter: str
    n_train: int
    n_val: int
    n_test: int
    val_source: str
    random_weights: bool
    train_ids_sha256: str
    run_id: str
    cached: bool = False
    n_excluded: int = 0  # rows left out: no embedding (image skipped at extraction)
    l2: float | None = None
    converged: bool | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def split_rows(emb: Embeddings, y: np.ndarray, task: str,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(train, val, test, val source) rows; a missing val is carved from train (seed 0).

    Rows flagged in ``exclude`` (default: the rows skipped at extraction) are left out of
    every split.
    """
    keep = ~exclude if exclude is not None else (
        ~emb.missing if emb.missing is not None else np.ones(len(emb.split), bool))
    tr = np.flatnonzero((emb.split == "train") & keep)
    va = np.flatnonzero((emb.split == "val") & keep)
    te = np.flatnonzero((emb.split == "test") & keep)
    for name, rows in (("train", tr), ("test", te)):
        if len(rows) == 0:
            raise ProbeError(f"{emb.dataset}: no rows in split {name!r}")
    val_source = "val split"
    if len(va) == 0:
        strat = y[tr] if task != "multilabel" else None
        tr, va = train_test_split(tr, test_size=VAL_CARVE_FRACTION, random_state=0,
                                  stratify=strat)
        tr, va = np.sort(tr), np.sort(va)
        val_source = f"{VAL_CARVE_FRACTION:.0%} of train (seed 0)"
    return tr, va, te, val_source


def probe_embeddings(emb: Embeddings, config: ProbeConfig | None = None, *,
                     store_set: EmbeddingSet | None = None, recompute: bool = False,
                     device: str = "cpu", **overrides: Any) -> list[ProbeRecord]:
    """Probe one embedding set on its dataset's splits and return one record per metric.

    ``config`` (or keyword overrides of its fields, e.g. ``task="ordinal"``) says which probe
    and how. ``fraction`` < 1 trains on a stratified, patient-grouped subset of train drawn
    with ``seed``; val and test stay whole. Without a val split, a stratified 20% of train
    (seed 0, the same for every run) is held out to choose hyperparameters. The primary
    metric carries a bootstrap CI on test. With ``store_set``, the run is read from the store
    when it was computed before (``cached=True``) and written there otherwise.

    Raises
    ------
    ProbeError
        No train or test rows, a single class in train, non-finite embeddings, bad options.
    """
    cfg = ProbeConfig(**{**asdict(config or ProbeConfig()), **overrides})
    if cfg.probe not in PROBES:
        raise ProbeError(f"unknown probe {cfg.probe!r} (expected one of {', '.join(PROBES)})")
    if cfg.ordinal_decode not in ORDINAL_DECODES:
        raise ProbeError(f"unknown ordinal decoding {cfg.ordinal_decode!r}")
    run_id = cfg.run_id(emb.key)
    if store_set is not None and not recompute:
        saved = store_set.probe_run(run_id)
        if saved is not None:
            return [_stored_record(r) for r in saved["records"]]
    task = cfg.task
    y = emb.labels if task == "multilabel" else emb.labels[:, 0]
    tr, va, te, val_source = split_rows(emb, y, task)
    tr = select_fraction(tr, emb.labels, emb.group, cfg.fraction, cfg.seed)
    X = emb.X
    pred_test = None
    l2 = converged = None
    if cfg.probe == "linear":
        sweep = fit_with_validation(X[tr], y[tr], X[va], y[va], task=task, l2_grid=cfg.l2_grid,
                                    device=device, max_iter=cfg.max_iter, tol=cfg.tol)
        model, l2, converged = sweep.probe, sweep.l2, sweep.converged[sweep.l2]
        hyper = f"l2={sweep.l2:g}"
    else:
        ksweep = knn_with_validation(X[tr], y[tr], X[va], y[va], task=task, ks=cfg.ks,
                                     device=device)
        model, hyper = ksweep.probe, f"k={ksweep.k}"
    proba_test = model.predict_proba(X[te])
    if task == "ordinal" and cfg.ordinal_decode == "expected":
        n_classes = proba_test.shape[1]
        thresholds = fit_thresholds(expected_grade(model.predict_proba(X[va])), y[va], n_classes)
        pred_test = decode(expected_grade(proba_test), thresholds)
        hyper += ", thresholds=" + ",".join(f"{t:.2f}" for t in thresholds)
    metrics = task_metrics(task, y[te], proba_test, pred_test)
    primary = PRIMARY_METRIC[task]
    lo, hi = bootstrap_ci(task, y[te], proba_test, pred_test, n_boot=cfg.n_bootstrap,
                          seed=cfg.seed)
    random_weights = bool(emb.attrs.get("provenance", {}).get("random_weights", False))
    records = [
        ProbeRecord(dataset=emb.dataset, backbone=emb.alias, key=emb.key, task=task,
                    probe=cfg.probe, metric=m, value=v, primary=m == primary,
                    ci_low=lo if m == primary else float("nan"),
                    ci_high=hi if m == primary else float("nan"),
                    fraction=cfg.fraction, seed=cfg.seed, hyperparameter=hyper,
                    n_train=len(tr), n_val=len(va), n_test=len(te), val_source=val_source,
                    random_weights=random_weights, train_ids_sha256=ids_sha256(emb.ids[tr]),
                    run_id=run_id, n_excluded=emb.n_missing, l2=l2, converged=converged,
                    config={**asdict(cfg), "standardise": "train mean/std" if
                            cfg.probe == "linear" else "L2-normalise",
                            "versions": {p: version(p) for p in
                                         ("featstore", "torch", "scikit-learn")}})
        for m, v in metrics.items()
    ]
    if store_set is not None:
        store_set.save_probe_run(run_id, {"config": asdict(cfg), "embedding_key": emb.key,
                                          "records": [r.to_dict() for r in records]})
    return records


def _stored_record(r: dict[str, Any]) -> ProbeRecord:
    """A record read back from the store (undefined values were stored as None)."""
    nan = float("nan")
    return ProbeRecord(**{**r, "cached": True,
                          **{k: nan if r[k] is None else float(r[k])
                             for k in ("value", "ci_low", "ci_high")}})


def stored_records(store_sets: Sequence[EmbeddingSet]) -> list[ProbeRecord]:
    """Every probe record persisted for these embedding sets (no computation)."""
    out = []
    for es in store_sets:
        for run in es.probe_runs():
            out.extend(_stored_record(r) for r in run["records"])
    return out
