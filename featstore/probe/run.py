"""Probe cached embeddings: train on (a fraction of) train, choose on val, score on test.

Every run is keyed by the sha256 of its full configuration (embedding key, probe, task,
fraction, seed, grid, tolerance, bootstrap, featstore version) and persisted in the store
next to the embeddings, so a run is reproducible alone and is never computed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from importlib.metadata import version
from typing import Any

import numpy as np

from featstore import options
from featstore._hashing import sha256_json
from featstore.choices import LINEAR_SOLVER, THRESHOLD_RULE
from featstore.data.fractions import (
    VAL_CARVE_FRACTION,  # noqa: F401  (re-exported: it lived here)
    VAL_SPLIT,
    ids_sha256,
    select_fraction,
    training_splits,
)
from featstore.errors import ManifestError, ProbeError
from featstore.grid import GridSettings, ProbeGrid
from featstore.probe.config import ProbeConfig
from featstore.records import ScoreRecord
from featstore.rows import ColumnBlocks, RowSource, take
from featstore.store.embedding_set import EmbeddingSet
from featstore.store.layout import Embeddings, Provenance

# the probes themselves (torch, scikit-learn) load when a run is computed, not to read one back

# How a missing val split is carved from train; part of a run's id whenever val was carved,
# so runs persisted by the old, group-unaware carve are never read back as current.
VAL_CARVE = "whole patients, stratified (split_by_group), seed 0"
# val_source of runs persisted by the earlier carve (rows, not patients): superseded
LEGACY_VAL_SOURCE = "20% of train (seed 0)"


@dataclass(kw_only=True)
class ProbeRecord(ScoreRecord):
    """One metric of one probe run on the test split (:class:`ScoreRecord`'s fields, and
    the embedding set, the probe, where val came from and what the solver did)."""

    backbone: str
    key: str
    probe: str
    val_source: str
    l2: float | None = None
    converged: bool | None = None
    # False: val could not choose (its metric undefined, e.g. one class in val): the
    # strongest regularisation was kept
    chosen_on_val: bool = True


def split_rows(emb: Embeddings, y: np.ndarray, task: str,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(train, val, test, val source) rows by :func:`featstore.data.fractions.training_splits`
    (a missing val carved from train by whole patients); rows flagged in ``exclude``
    (default: the rows skipped at extraction) are left out of every split."""
    if exclude is None:
        exclude = emb.missing
    try:
        return training_splits(emb.split, y, emb.group, exclude, name=emb.dataset)
    except ManifestError as e:
        raise ProbeError(str(e)) from None


@dataclass
class _Fit:
    """A probe fitted on one run's rows, and its predictions: what seeds on those same rows
    share (they differ in the bootstrap of the test metric only)."""

    model: Any
    hyper: str
    val_scores: dict
    l2: float | None
    converged: bool | None
    chosen_on_val: bool
    proba_test: np.ndarray
    pred_test: np.ndarray | None


def _fit(cfg: ProbeConfig, X: np.ndarray | RowSource, y: np.ndarray, tr: np.ndarray,
         va: np.ndarray, te: np.ndarray, device: str) -> _Fit:
    """Fit ``cfg``'s probe on rows ``tr``, choose on ``va``, predict ``te``.

    The rows are taken from ``X`` (an array, or a set read shard by shard) once, val and
    test in the stored dtype, scored a block at a time; the training rows compact in the
    stored dtype for the linear probe (standardised as one float32 copy when that takes at
    most ``linear.DENSE_BYTES``, else a block at a time at every pass); for kNN normalised
    a block at a time as they are searched."""
    from featstore.probe.knn import knn_with_validation
    from featstore.probe.linear import fit_with_validation
    from featstore.probe.ordinal import decode, expected_grade, fit_thresholds
    from featstore.task import binary_decision

    task = cfg.task
    pred_test = None
    l2 = converged = None
    if cfg.probe == "linear":  # train rows compact: the solver streams them when large
        X_tr, X_va, X_te = take(X, [tr, va, te])
        sweep = fit_with_validation(ColumnBlocks([X_tr]), y[tr], X_va, y[va], task=task,
                                    l2_grid=cfg.l2_grid, device=device, max_iter=cfg.max_iter,
                                    tol=cfg.tol)
        model, l2, converged = sweep.probe, sweep.l2, sweep.converged[sweep.l2]
        hyper, val_scores, proba_val = f"l2={sweep.l2:g}", sweep.val_scores, sweep.val_proba
    else:  # kNN: the train rows compact, normalised a block at a time as searched
        X_tr, X_va, X_te = take(X, [tr, va, te])
        ksweep = knn_with_validation(X_tr, y[tr], X_va, y[va], task=task, ks=cfg.ks,
                                     device=device, overwrite=True)
        model, hyper, val_scores = ksweep.probe, f"k={ksweep.k}", ksweep.val_scores
        proba_val = ksweep.val_proba
    del X_tr  # the model holds what it needs (a kNN probe: the training rows)
    chosen_on_val = any(np.isfinite(v) for v in val_scores.values())
    if not chosen_on_val:
        hyper += " (not chosen: val metric undefined)"
    proba_test = model.predict_proba(X_te)
    pred_test, threshold = binary_decision(task, y[va], proba_val, proba_test)
    if threshold is not None:
        hyper += f", threshold={threshold:.3g}"
    if task == "ordinal" and cfg.ordinal_decode == "expected":
        n_classes = proba_test.shape[1]
        thresholds = fit_thresholds(expected_grade(model.predict_proba(X_va)), y[va], n_classes)
        pred_test = decode(expected_grade(proba_test), thresholds)
        hyper += ", thresholds=" + ",".join(f"{t:.2f}" for t in thresholds)
    return _Fit(model, hyper, val_scores, l2, converged, chosen_on_val, proba_test, pred_test)


def probe_embeddings(emb: Embeddings, config: ProbeConfig | None = None, *,
                     store_set: EmbeddingSet | None = None, recompute: bool = False,
                     device: str = "cpu", fits: dict | None = None,
                     **overrides: Any) -> list[ProbeRecord]:
    """Probe one embedding set on its dataset's splits and return one record per metric.

    ``config`` (or keyword overrides of its fields, e.g. ``task="ordinal"``) says which probe
    and how. ``fraction`` < 1 trains on a stratified, patient-grouped subset of train drawn
    with ``seed``; val and test stay whole. Without a val split, 20% of the train patients
    (whole patients, stratified, seed 0, the same for every run) are held out to choose
    hyperparameters. The primary
    metric carries a bootstrap CI on test. With ``store_set``, the run is read from the store
    when it was computed before (``cached=True``) and written there otherwise. ``fits``: a
    memo runs share (:func:`probe_grid` keeps one per set): a run on the rows and settings of
    one fitted before (every seed at fraction 1) scores that fit with its own bootstrap.

    Raises
    ------
    ProbeError
        No train or test rows, a single class in train, non-finite embeddings, bad options.
    """
    from featstore.task import scored_metrics

    cfg = ProbeConfig(**{**asdict(config or ProbeConfig()), **overrides})
    run_ids = _run_ids(emb, cfg)
    run_id = run_ids[0]
    task = cfg.task
    y = emb.labels if task == "multilabel" else emb.labels[:, 0]
    tr, va, te, val_source = split_rows(emb, y, task)
    if store_set is not None and not recompute:
        saved = _stored_run(store_set, run_ids)
        if saved is not None:
            return saved
    if emb.X is None:
        raise ProbeError(f"{emb.dataset}: embeddings {emb.alias} were not loaded")
    tr = select_fraction(tr, emb.labels, emb.group, cfg.fraction, cfg.seed)
    # the seed draws the rows and the bootstrap: a run on the rows of a run fitted before
    # (every seed at fraction 1) scores that fit with its own bootstrap
    same = (emb.key, sha256_json({**cfg.stored(), "seed": None}), ids_sha256(emb.ids[tr]))
    fit = fits.get(same) if fits is not None else None
    if fit is None:
        if fits is not None:  # the last fit only (a kNN fit holds its training rows),
            fits.clear()  # given up before the next one is made
        fit = _fit(cfg, emb.X, y, tr, va, te, device)
        if fits is not None:
            fits[same] = fit
    model = fit.model
    random_weights = bool(Provenance.from_dict(emb.attrs.get("provenance")).random_weights)
    records = [
        ProbeRecord(dataset=emb.dataset, backbone=emb.alias, key=emb.key, task=task,
                    probe=cfg.probe, **scored, fraction=cfg.fraction, seed=cfg.seed,
                    hyperparameter=fit.hyper,
                    n_train=len(tr), n_val=len(va), n_test=len(te), val_source=val_source,
                    random_weights=random_weights, train_ids_sha256=ids_sha256(emb.ids[tr]),
                    run_id=run_id, n_excluded=emb.n_missing, l2=fit.l2,
                    converged=fit.converged, chosen_on_val=fit.chosen_on_val,
                    config={**cfg.stored(), "standardise": "train mean/std" if
                            cfg.probe == "linear" else "L2-normalise",
                            "versions": {p: version(p) for p in
                                         ("featstore", "torch", "scikit-learn")}})
        for scored in scored_metrics(task, y[te], fit.proba_test, fit.pred_test,
                                     n_bootstrap=cfg.n_bootstrap, seed=cfg.seed,
                                     label_names=emb.label_names)
    ]
    if store_set is not None:
        if cfg.probe == "linear":  # the head a finetuning run may start from (LP-FT)
            store_set.save_probe_head(run_id, {
                "coef": model.coef_, "intercept": model.intercept_, "mean": model.mean_,
                "scale": model.scale_, "classes": np.asarray(model.classes_)})
        store_set.probe_runs.save(run_id, {"config": cfg.stored(), "embedding_key": emb.key,
                                          "records": [r.to_dict() for r in records]})
    return records


def probe_run_id(emb: Embeddings, config: ProbeConfig) -> str:
    """The id a probe run of ``config`` on these embeddings is persisted under; needs only
    the index (labels, splits, groups, skipped rows), never the embeddings themselves.

    Raises
    ------
    ProbeError
        A value the config refuses (an unknown probe or ordinal decoding, an L2 value
        <= 0, k < 1), or splits a probe cannot use.
    """
    return _run_ids(emb, config)[0]


def _run_ids(emb: Embeddings, config: ProbeConfig) -> tuple[str, ...]:
    """:func:`probe_run_id`, then the id an earlier featstore gave the same run where it
    differs (:meth:`ProbeConfig.run_ids`)."""
    options.check(config, ProbeError)  # every field against what the config declares
    y = emb.labels if config.task == "multilabel" else emb.labels[:, 0]
    val_source = split_rows(emb, y, config.task)[3]
    return config.run_ids(emb.key, _carve(val_source))


def _carve(val_source: str) -> str | None:
    """What a run's id says of its val: None for the dataset's own, else how it was carved."""
    return None if val_source == VAL_SPLIT else VAL_CARVE


def _stored_run(es: EmbeddingSet, run_ids: Sequence[str]) -> list[ProbeRecord] | None:
    """The records of the run stored under the first of ``run_ids`` the set holds; None when
    it holds none."""
    saved = es.probe_runs.first(run_ids)
    return None if saved is None else _read_back(saved)


def _read_back(run: dict[str, Any]) -> list[ProbeRecord]:
    """A stored run's records; the settings its probe does not use shown at their defaults,
    as they are stored today (a run stored before then shows them as given)."""
    records = [ProbeRecord.from_stored(r) for r in run.get("records", [])]
    for r in records:
        unused = ProbeConfig.unused(r.probe, r.task)
        r.config = {**r.config, **{k: v for k, v in unused.items() if k in r.config}}
    return records


def probe_grid(sets: Sequence[EmbeddingSet], config: ProbeConfig | None = None, *,
               probes: Sequence[str] = ("linear",), fractions: Sequence[float] = (1.0,),
               seeds: int | Sequence[int] = 1, recompute: bool = False, device: str = "cpu",
               verify: bool = True,
               on_run: Callable[[list[ProbeRecord]], None] | None = None) -> list[ProbeRecord]:
    """Probe every set x probe x fraction x seed; each run persisted in (or read from) the
    store.

    Without ``config``, each set is probed for its dataset's task with the default settings.
    ``seeds``: a count N (seeds 0..N-1) or the seeds themselves. Arguments are checked before
    anything is computed. Every shard read is checked against its checksum unless ``verify``
    is false. ``on_run`` is called with each run's records as it finishes (a progress hook).

    Raises
    ------
    ProbeError
        An unknown or repeated probe, a fraction outside (0, 1], no seeds, a device this
        machine lacks; or as :func:`probe_embeddings`.
    CorruptShardError
        A shard fails its checksum (named); nothing is computed from it.
    """
    grid = ProbeGrid(probes=[p.strip() for p in probes], fractions=fractions, seeds=seeds,
                     device=device).check(ProbeError)
    kinds, seed_list, device = grid.probes, grid.seed_list(), options.resolved_device(device)
    records: list[ProbeRecord] = []
    for es in sets:
        # without a config, each set is probed for its dataset's own task
        cfg = config or ProbeConfig(task=str(es.dataset.attrs.get("task", "binary")))
        emb = es.load(index_only=True)  # the embeddings: read only to compute, by rows
        fits: dict = {}  # the seeds of one set's runs on the same rows share one fit
        for kind in kinds:
            for fraction in fractions:
                for seed in seed_list:
                    run_cfg = replace(cfg, probe=kind, fraction=float(fraction), seed=seed)
                    run = None if recompute else _stored_run(es, _run_ids(emb, run_cfg))
                    if run is None:
                        if emb.X is None:
                            emb = replace(emb, X=es.rows_source(verify=verify))
                        run = probe_embeddings(emb, run_cfg, store_set=es, recompute=True,
                                               device=device, fits=fits)
                    records.extend(run)
                    if on_run is not None:
                        on_run(run)
    return records


def probe_run_ids(embedding_key: str, val_source: str, config: ProbeConfig, *,
                  probes: Sequence[str], fractions: Sequence[float],
                  seeds: int | Sequence[int]) -> list[tuple[str, ...]]:
    """For each run of a probe grid, the ids it is found under (the one it is persisted
    under first, :meth:`ProbeConfig.run_ids`), computing nothing (a planner asks the store
    which are there). ``val_source``: as :func:`featstore.data.fractions.val_source` says
    for the dataset."""
    return [replace(config, probe=p, fraction=float(f), seed=s).run_ids(embedding_key,
                                                                          _carve(val_source))
            for p in probes for f in fractions for s in check_grid(fractions, seeds)]


def check_grid(fractions: Sequence[float], seeds: int | Sequence[int],
               device: str = "cpu") -> list[int]:
    """The seeds of a fractions x seeds grid, after checking both (and the device), as
    :class:`featstore.grid.GridSettings` declares them.

    Raises
    ------
    ProbeError
        No fractions, a fraction outside (0, 1] or repeated, no seeds, a negative or
        repeated seed, a device this machine lacks.
    """
    return GridSettings(fractions=fractions, seeds=seeds, device=device).check(
        ProbeError).seed_list()


def stored_records(store_sets: Sequence[EmbeddingSet]) -> list[ProbeRecord]:
    """Every probe record persisted for these embedding sets (no computation).

    Runs whose val was carved by the earlier, patient-unaware rule are superseded (a probe
    recomputes them) and not listed; so is a run stored under an earlier id once the same run
    has been stored under today's (a linear run of an earlier solver or a binary run of
    the earlier 0.5 decision threshold, recomputed with the
    current one: until then it is listed, its configuration naming no solver, so it is never
    averaged with the current solver's runs; a run whose id held a setting its probe does not
    use, such as a linear run's ``ks``).
    """
    out = []
    for es in store_sets:
        runs = es.probe_runs.by_id()
        for run_id, run in runs.items():
            records = run.get("records", [])
            if records and records[0].get("val_source") == LEGACY_VAL_SOURCE:
                continue
            current = _current_id(es.key, run) if records else None
            if current not in (None, run_id) and current in runs:
                continue
            out.extend(_read_back(run))
    return out


def _current_id(embedding_key: str, run: dict[str, Any]) -> str | None:
    """The id a stored run has when made today (the current solver for a linear run, the
    settings its probe does not use at their defaults); None for a configuration this
    featstore cannot read (a setting it does not know, a newer solver's run)."""
    cfg = run.get("config") or {}
    known = {f.name for f in fields(ProbeConfig)}
    if (set(cfg) - known - {"solver", "threshold"}
            or cfg.get("solver", LINEAR_SOLVER) != LINEAR_SOLVER
            or cfg.get("threshold", THRESHOLD_RULE) != THRESHOLD_RULE):
        return None
    try:
        config = ProbeConfig(**{k: v for k, v in cfg.items() if k in known})
    except (TypeError, ValueError):
        return None
    return config.run_id(embedding_key, _carve(run["records"][0].get("val_source")))
