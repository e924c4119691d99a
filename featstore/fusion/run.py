"""Fuse cached embedding sets with DVME, beside the concat and best-single baselines.

Every method of one (fraction, seed) trains on the same rows, so rows of the table compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

from featstore._hashing import sha256_json
from featstore.data.fractions import ids_sha256, select_fraction
from featstore.errors import FusionError
from featstore.fusion.dvme import DVME
from featstore.probe.linear import fit_with_validation
from featstore.probe.metrics import PRIMARY_METRIC, bootstrap_ci, task_metrics
from featstore.probe.run import split_rows
from featstore.store.zarr_store import Embeddings


@dataclass
class FuseRecord:
    """One metric of one method (a DVME variant, concat, or a single backbone) on test."""

    dataset: str
    method: str
    backbones: list[str]
    keys: list[str]
    task: str
    metric: str
    value: float
    primary: bool
    ci_low: float
    ci_high: float
    fraction: float
    seed: int
    n_train: int
    n_val: int
    n_test: int
    train_ids_sha256: str
    run_id: str
    n_excluded: int = 0  # rows without an embedding in some backbone (skipped images)
    attention: dict[str, float] = field(default_factory=dict)
    attention_per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    head_path: str | None = None
    epochs: int | None = None
    hyperparameter: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_aligned(embs: Sequence[Embeddings]) -> None:
    """All sets come from one dataset and hold the same ids in the same order.

    Raises
    ------
    FusionError
        Names the set that differs, and how many ids it lacks or adds.
    """
    if len(embs) < 2:
        raise FusionError("fusion needs at least two embedding sets")
    ref = embs[0]
    for e in embs[1:]:
        if e.dataset != ref.dataset:
            raise FusionError(f"{e.alias} belongs to dataset {e.dataset}, {ref.alias} to "
                              f"{ref.dataset}: fuse embeddings of one manifest")
        if len(e.ids) != len(ref.ids) or not np.array_equal(e.ids, ref.ids):
            a, b = set(map(str, ref.ids)), set(map(str, e.ids))
            raise FusionError(f"{e.alias} does not align with {ref.alias}: "
                              f"{len(a - b)} ids missing, {len(b - a)} extra")


def _records(method, task, y_te, proba, cfg, base, **extra) -> list[FuseRecord]:
    metrics = task_metrics(task, y_te, proba)
    primary = PRIMARY_METRIC[task]
    lo, hi = bootstrap_ci(task, y_te, proba, n_boot=cfg["n_bootstrap"], seed=cfg["seed"])
    return [FuseRecord(method=method, metric=m, value=v, primary=m == primary,
                       ci_low=lo if m == primary else float("nan"),
                       ci_high=hi if m == primary else float("nan"), **base, **extra)
            for m, v in metrics.items()]


def fuse_embeddings(embs: Sequence[Embeddings], *, task: str, fraction: float = 1.0,
                    seed: int = 0, attentions: Sequence[str] = ("softmax",), dim: int = 256,
                    n_bootstrap: int = 1000, baselines: bool = True,
                    heads_dir: str | Path | None = None, device: str = "cpu",
                    **dvme_options) -> list[FuseRecord]:
    """Train DVME (each attention variant), and the concat and single-backbone linear probes.

    Returns one record per method and metric. The attention weights of each DVME variant are
    averaged on test, overall and per class (single-label tasks). With ``heads_dir``, each
    trained head is saved there (``DVME.load`` reads it back).

    Raises
    ------
    FusionError
        The sets do not align; ProbeError for bad labels or features.
    """
    check_aligned(embs)
    ref = embs[0]
    y = ref.labels if task == "multilabel" else ref.labels[:, 0]
    missing = np.zeros(len(ref.ids), bool)
    for e in embs:  # a row is fused only where every backbone has an embedding
        if e.missing is not None:
            missing |= e.missing
    tr, va, te, _ = split_rows(ref, y, task, exclude=missing)
    tr = select_fraction(tr, ref.labels, ref.group, fraction, seed)
    cfg = {"task": task, "fraction": fraction, "seed": seed, "dim": dim,
           "n_bootstrap": n_bootstrap, "keys": [e.key for e in embs], **dvme_options,
           "featstore": version("featstore")}
    run_id = sha256_json(cfg)[:24]
    base = {"dataset": ref.dataset, "backbones": [e.alias for e in embs],
            "keys": [e.key for e in embs], "task": task, "fraction": fraction, "seed": seed,
            "n_train": len(tr), "n_val": len(va), "n_test": len(te),
            "n_excluded": int(missing.sum()),
            "train_ids_sha256": ids_sha256(ref.ids[tr]), "run_id": run_id}
    records: list[FuseRecord] = []
    for attention in attentions:
        head = DVME(task, dim=dim, attention=attention, seed=seed, device=device,
                    **dvme_options)
        head.fit([e.X[tr] for e in embs], y[tr], [e.X[va] for e in embs], y[va])
        Xte = [e.X[te] for e in embs]
        alpha = head.attention_weights(Xte)
        overall = {e.alias: float(a) for e, a in zip(embs, alpha.mean(0), strict=True)}
        per_class = {}
        if task != "multilabel":
            for c in np.unique(y[te]):
                per_class[str(c)] = {e.alias: float(a) for e, a in
                                     zip(embs, alpha[y[te] == c].mean(0), strict=True)}
        path = None
        if heads_dir is not None:
            Path(heads_dir).mkdir(parents=True, exist_ok=True)
            path = str(Path(heads_dir) / f"dvme-{attention}-{run_id}.pt")
            head.save(path)
        records += _records(f"dvme-{attention}", task, y[te], head.predict_proba(Xte),
                            cfg, base, attention=overall, attention_per_class=per_class,
                            head_path=path, epochs=head.n_epochs_,
                            hyperparameter=f"epochs={head.n_epochs_}")
    if baselines:
        concat = [np.concatenate([e.X[rows] for e in embs], axis=1) for rows in (tr, va, te)]
        sweep = fit_with_validation(concat[0], y[tr], concat[1], y[va], task=task,
                                    device=device)
        records += _records("concat", task, y[te], sweep.probe.predict_proba(concat[2]),
                            cfg, base, hyperparameter=f"l2={sweep.l2:g}")
        for e in embs:
            sweep = fit_with_validation(e.X[tr], y[tr], e.X[va], y[va], task=task,
                                        device=device)
            records += _records(f"single:{e.alias}", task, y[te],
                                sweep.probe.predict_proba(e.X[te]), cfg, base,
                                hyperparameter=f"l2={sweep.l2:g}")
    return records
