"""Fuse cached embedding sets with DVME, beside the concat and best-single baselines.

Every method of one (fraction, seed) trains on the same rows, so rows of the table compare.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import options
from featstore.choices import ATTENTIONS, HEAD_VERSION, LINEAR_SOLVER
from featstore.data.fractions import ids_sha256, select_fraction
from featstore.errors import FusionError, as_fusion_error
from featstore.fusion.config import FuseConfig
from featstore.outputs import output_errors
from featstore.probe.run import check_grid, split_rows
from featstore.records import ScoreRecord
from featstore.rows import ColumnBlocks, take
from featstore.runkeys import decision_rule, run_ids
from featstore.runkeys import run_id as run_key
from featstore.store.dataset import DatasetGroup
from featstore.store.embedding_set import EmbeddingSet
from featstore.store.layout import Embeddings, Provenance

if TYPE_CHECKING:
    from featstore.probe.linear import SweepResult

# the head and the probes (torch, scikit-learn) load when a run is computed, not to key one
# (a pipeline's plan) or to read one back (results, report)

MAX_BACKBONES = 8


@dataclass(kw_only=True)
class FuseRecord(ScoreRecord):
    """One metric of one method (a DVME variant, concat, or a single backbone) on test
    (:class:`ScoreRecord`'s fields, and the method, the sets it fused, what the head did)."""

    method: str
    backbones: list[str]
    keys: list[str]
    attention: dict[str, float] = field(default_factory=dict)
    attention_per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    head_path: str | None = None
    epochs: int | None = None


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


def _records(method: str, task: str, y_te: np.ndarray, proba: np.ndarray, cfg: dict,
             base: dict, label_names: Sequence[str] = (), *, val: tuple[np.ndarray, Any],
             hyperparameter: str, **extra) -> list[FuseRecord]:
    """The method's records; ``val``: val's labels and the method's probabilities there,
    where a binary run's decision threshold is chosen (said in its ``hyperparameter``)."""
    from featstore.task import binary_decision, scored_metrics

    pred, threshold = binary_decision(task, *val, proba)
    if threshold is not None:
        hyperparameter += f", threshold={threshold:.3g}"
    return [FuseRecord(method=method, **scored, **base, hyperparameter=hyperparameter,
                       **extra)
            for scored in scored_metrics(task, y_te, proba, pred,
                                         n_bootstrap=cfg["n_bootstrap"], seed=cfg["seed"],
                                         label_names=label_names)]


def fuse_embeddings(embs: Sequence[Embeddings], *, task: str, fraction: float = 1.0,
                    seed: int = 0, attentions: Sequence[str] = ("softmax",), dim: int = 256,
                    n_bootstrap: int = 1000, baselines: bool = True,
                    heads_dir: str | Path | None = None, device: str = "cpu",
                    dataset: DatasetGroup | None = None, recompute: bool = False,
                    **dvme_options) -> list[FuseRecord]:
    """Train DVME (each attention variant), and the concat and single-backbone linear probes.

    Returns one record per method and metric. The attention weights of each DVME variant are
    averaged on test, overall and per class (single-label tasks). With ``heads_dir``, each
    trained head is saved there (``DVME.load`` reads it back). With ``dataset`` (the sets'
    dataset group), each method's run is persisted there under its own id and read back
    (``cached=True``) instead of recomputed, unless ``recompute``.

    Raises
    ------
    FusionError
        The sets do not align, an unknown attention, bad labels or features.
    """
    from featstore.fusion.dvme import DVME
    from featstore.probe.linear import fit_with_validation

    check_aligned(embs)
    for attention in attentions:
        if attention not in ATTENTIONS:
            raise FusionError(f"unknown attention {attention!r} "
                              f"(expected one of {', '.join(ATTENTIONS)})")
    ref = embs[0]
    y = ref.labels if task == "multilabel" else ref.labels[:, 0]
    missing = np.zeros(len(ref.ids), bool)
    for e in embs:  # a row is fused only where every backbone has an embedding
        if e.missing is not None:
            missing |= e.missing
    tr, va, te, val_source = split_rows(ref, y, task, exclude=missing)
    tr = select_fraction(tr, ref.labels, ref.group, fraction, seed)
    cfg = _run_config([e.key for e in embs], task=task, fraction=fraction, seed=seed, dim=dim,
                      n_bootstrap=n_bootstrap, val_source=val_source, **dvme_options)
    names = _display_names(embs)
    base = {"dataset": ref.dataset, "backbones": names,
            "keys": [e.key for e in embs], "task": task, "fraction": fraction, "seed": seed,
            "n_train": len(tr), "n_val": len(va), "n_test": len(te),
            "n_excluded": int(missing.sum()),
            "random_weights": any(Provenance.from_dict(e.attrs.get("provenance")).random_weights
                                  for e in embs),
            "train_ids_sha256": ids_sha256(ref.ids[tr])}

    # (runs persisted before runs were keyed per method, one id per fraction and seed, were
    # all fitted by an earlier linear solver: the solver in ``cfg`` keeps them from matching)

    def method_run(method: str, fit: Callable[[str], list[FuseRecord]],
                   identity: str | None = None) -> list[FuseRecord]:
        """A method's records: read back when persisted under its id (``identity``: what
        the method is, when its display name does not say it all), else computed and saved."""
        given = {**cfg, "method": identity or method}
        run_config, rids = _keyed(given), _run_ids(given)
        rid, shown = rids[0], record_config(run_config)
        if dataset is not None and not recompute:
            saved = dataset.fusion_runs.first(rids)
            if saved is not None:
                return [replace(stored_fusion_record(r), random_weights=base["random_weights"],
                                config=shown)
                        for r in saved["records"]]
        recs = [replace(r, config=shown) for r in fit(rid)]
        if dataset is not None:
            dataset.fusion_runs.save(rid, {"config": run_config,
                                          "records": [r.to_dict() for r in recs]})
        return recs

    concat: list[SweepResult] = []
    held: list[list[list[np.ndarray]]] = []

    def rows() -> list[list[np.ndarray]]:
        """Each backbone's train and val rows, compact in their stored dtype, read once a
        run when a method first needs them (a run read back needs none)."""
        if not held:
            per_set = [take(e.X, [tr, va]) for e in embs]
            held.append([[p[i] for p in per_set] for i in range(2)])
        return held[0]

    def test_rows(parts: Sequence[int]) -> list[np.ndarray]:
        """The test rows of backbones ``parts``, read as a method is scored (not held while
        the others train)."""
        return [take(embs[i].X, [te])[0] for i in parts]

    def concat_probe() -> SweepResult:
        """The linear probe on the concatenation: the concat baseline, and the start of
        every DVME head (fitted once a run, whichever needs it first). The concatenation is
        never made whole: the solver reads it a block of rows at a time when it is large."""
        if not concat:
            Xtr, Xva = rows()
            with as_fusion_error():
                concat.append(fit_with_validation(ColumnBlocks(Xtr), y[tr], ColumnBlocks(Xva),
                                                  y[va], task=task, device=device))
        return concat[0]

    def dvme(attention: str, rid: str) -> list[FuseRecord]:
        head = DVME(task, dim=dim, attention=attention, seed=seed, device=device,
                    **dvme_options)
        Xtr, Xva = rows()
        head.fit(Xtr, y[tr], Xva, y[va], concat_probe=concat_probe())
        proba_va = head.predict_proba(Xva) if task == "binary" else None
        del Xtr, Xva
        Xte = test_rows(range(len(embs)))
        alpha = head.attention_weights(Xte)
        overall = {n: float(a) for n, a in zip(names, alpha.mean(0), strict=True)}
        per_class = {}
        if task != "multilabel":
            for c in np.unique(y[te]):
                per_class[str(c)] = {n: float(a) for n, a in
                                     zip(names, alpha[y[te] == c].mean(0), strict=True)}
        path = None
        if heads_dir is not None:
            path = str(Path(heads_dir) / f"dvme-{attention}-{rid}.pt")
            with output_errors(heads_dir, "--heads-dir"):
                Path(heads_dir).mkdir(parents=True, exist_ok=True)
                head.save(path)
        return _records(f"dvme-{attention}", task, y[te], head.predict_proba(Xte), cfg,
                        {**base, "run_id": rid}, ref.label_names, val=(y[va], proba_va),
                        attention=overall,
                        attention_per_class=per_class, head_path=path,
                        epochs=head.n_epochs_,
                        hyperparameter=f"epochs={head.n_epochs_}, start={head.start_}")

    def linear(method: str, parts: Sequence[int], rid: str) -> list[FuseRecord]:
        if method == "concat":
            sweep = concat_probe()
        else:
            Xtr, Xva = ([X[i] for i in parts] for X in rows())
            with as_fusion_error():
                sweep = fit_with_validation(ColumnBlocks(Xtr), y[tr], ColumnBlocks(Xva), y[va],
                                            task=task, device=device)
            del Xtr, Xva
        Xte = test_rows(parts)
        return _records(method, task, y[te], sweep.probe.predict_proba(ColumnBlocks(Xte)), cfg,
                        {**base, "run_id": rid}, ref.label_names,
                        val=(y[va], sweep.val_proba), hyperparameter=f"l2={sweep.l2:g}")

    records: list[FuseRecord] = []
    for attention in attentions:
        records += method_run(f"dvme-{attention}", partial(dvme, attention),
                              identity=_dvme_identity(attention))
    if baselines:
        records += method_run("concat", partial(linear, "concat", range(len(embs))))
        for i, (e, name) in enumerate(zip(embs, names, strict=True)):
            records += method_run(f"single:{name}", partial(linear, f"single:{name}", [i]),
                                  identity=f"single:{e.key}")
    return records


def _run_config(keys: Sequence[str], *, task: str, fraction: float, seed: int, dim: int,
                n_bootstrap: int, val_source: str, **dvme_options) -> dict[str, Any]:
    """What a fusion run of one (fraction, seed) is, beside its method. Every method fits
    the linear probe's solver (the baselines are probes; a DVME head starts from the concat
    probe), so the solver is part of every run."""
    return {"task": task, "fraction": fraction, "seed": seed, "dim": dim,
            "n_bootstrap": n_bootstrap, "keys": list(keys), "val": val_source, **dvme_options,
            "solver": LINEAR_SOLVER, **decision_rule(task)}


_HEAD_FREE = ("task", "fraction", "seed", "n_bootstrap", "keys", "val", "method", "solver",
              "threshold")


def record_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The configuration a fusion record shows: the whole run's for a DVME head; for the
    linear baselines (concat, single) without the head's settings (``dim``, DVME options),
    which do not change their numbers, so their runs at two head widths are one row."""
    if _is_head(run_config):
        return dict(run_config)
    return {k: v for k, v in run_config.items() if k in _HEAD_FREE}


def _is_head(run_config: dict[str, Any]) -> bool:
    return str(run_config.get("method", "")).startswith("dvme")


def _keyed(run_config: dict[str, Any]) -> dict[str, Any]:
    """The configuration a run is keyed and stored by: a DVME head's as given; a linear
    baseline's with the head's settings at their defaults (``dim``, no DVME option), which
    do not change its numbers: ``fuse --dim 16`` reads back the baselines ``fuse`` made, and
    runs of default settings keep the ids they always had."""
    if _is_head(run_config):
        return run_config
    return {**record_config(run_config), "dim": options.default(FuseConfig, "dim")}


def _run_ids(run_config: dict[str, Any]) -> tuple[str, ...]:
    """The ids a run is found under: the id of its :func:`_keyed` configuration (the one it
    is stored under), then the id an earlier featstore gave a baseline (the head's settings
    as given) where it differs."""
    return run_ids(_keyed(run_config), run_config)


def _dvme_identity(attention: str) -> str:
    return f"dvme-{attention}@head-v{HEAD_VERSION}"  # the head's version is part of a run


def fusion_run_ids(keys: Sequence[str], val_source: str, *, task: str,
                   fractions: Sequence[float] = (1.0,), seeds: int | Sequence[int] = 1,
                   attentions: Sequence[str] = ("softmax",), dim: int = 256,
                   n_bootstrap: int = 1000, baselines: bool = True,
                   **dvme_options) -> list[tuple[str, ...]]:
    """For each run of a :func:`fuse_grid` (one per method, fraction and seed), the ids it is
    found under (the one it is persisted under first), computing nothing: a planner asks the
    store which are there. ``val_source``: as :func:`featstore.data.fractions.val_source`
    says for the dataset."""
    methods = [_dvme_identity(a) for a in attentions]
    if baselines:
        methods += ["concat", *[f"single:{k}" for k in keys]]
    with as_fusion_error():
        seed_list = check_grid(fractions, seeds)
    return [_run_ids({**_run_config(keys, task=task, fraction=float(f), seed=s, dim=dim,
                                    n_bootstrap=n_bootstrap, val_source=val_source,
                                    **dvme_options), "method": m})
            for f in fractions for s in seed_list for m in methods]


def _display_names(embs: Sequence[Embeddings]) -> list[str]:
    """Each set's alias, with its key prefix where two sets share an alias (one spec at two
    precisions, two checkpoints of one file name)."""
    counts = Counter(e.alias for e in embs)
    return [e.alias if counts[e.alias] == 1 else f"{e.alias}#{e.key[:8]}" for e in embs]


def fuse_grid(sets: Sequence[EmbeddingSet], *, task: str, fractions: Sequence[float] = (1.0,),
              seeds: int | Sequence[int] = 1, attentions: Sequence[str] = ("softmax",),
              dim: int = 256, n_bootstrap: int = 1000, baselines: bool = True,
              heads_dir: str | Path | None = None, recompute: bool = False,
              device: str = "cpu", verify: bool = True,
              on_run: Callable[[list[FuseRecord]], None] | None = None,
              **dvme_options) -> list[FuseRecord]:
    """DVME and its baselines over fractions x seeds, each run persisted in the store.

    ``sets``: 2 to 8 embedding sets of one dataset. Every method of a (fraction, seed)
    trains on the same rows. A run already persisted under the same configuration is read
    back (``cached=True``), unless ``recompute``. Every shard read is checked against its
    checksum unless ``verify`` is false. ``on_run`` is called with each (fraction, seed)'s
    records, every method's, as they are done (a progress hook).

    Raises
    ------
    FusionError
        Fewer than 2 or more than 8 sets, a set given twice, sets of different datasets, a
        value its config or grid refuses (an unknown attention, a dim or bootstrap out of
        bounds, a bad fraction or seed, a device this machine lacks); or as
        :func:`fuse_embeddings`.
    """
    if not 2 <= len(sets) <= MAX_BACKBONES:
        raise FusionError(f"fusion takes 2 to {MAX_BACKBONES} embedding sets, got {len(sets)}")
    check_distinct(sets)
    FuseConfig(attentions=attentions, dim=dim, baselines=baselines,
               n_bootstrap=n_bootstrap).check()
    with as_fusion_error():
        seed_list = check_grid(fractions, seeds, device)
    device = options.resolved_device(device)
    # the index now; the embeddings read by rows, a run's own, when a run is computed
    embs = [replace(es.load(index_only=True), X=es.rows_source(verify=verify)) for es in sets]
    records: list[FuseRecord] = []
    for fraction in fractions:
        for seed in seed_list:
            run = fuse_embeddings(embs, task=task, fraction=float(fraction), seed=seed,
                                  attentions=attentions, dim=dim, n_bootstrap=n_bootstrap,
                                  baselines=baselines, heads_dir=heads_dir, device=device,
                                  dataset=sets[0].dataset, recompute=recompute,
                                  **dvme_options)
            records += run
            if on_run is not None:
                on_run(run)
    return records


def check_distinct(sets: Sequence[EmbeddingSet]) -> None:
    """Each set once: a set fused with itself is no fusion (``-b X -b X``, or a spec and
    its alias)."""
    seen: set[str] = set()
    for es in sets:
        if es.key in seen:
            raise options.refused(FusionError, "backbones", es.alias,
                                  "repeated (expected each embedding set once)", cli="backbone")
        seen.add(es.key)


def stored_fusion_record(r: dict[str, Any]) -> FuseRecord:
    """A record read back from the store."""
    return FuseRecord.from_stored(r)


def _made_again(config: dict[str, Any], runs: dict[str, Any]) -> bool:
    """Whether a run of an earlier linear solver or DVME head version, or a baseline keyed
    with the head's settings as given, was made again, the same run otherwise, by the
    current ones (its id is among ``runs``)."""
    remade = [{**config, "solver": LINEAR_SOLVER, **decision_rule(config.get("task", ""))}]
    head = re.fullmatch(r"dvme-(\w+)@head-v(\d+)", str(config.get("method", "")))
    if head and int(head[2]) < HEAD_VERSION:  # by the current head (and solver)
        remade.append({**remade[0], "method": _dvme_identity(head[1])})
    remade.append(_keyed(remade[0]))  # a baseline, its head's settings at their defaults
    return any(c != config and run_key(c) in runs for c in remade)


def stored_fusion_records(datasets: Sequence[DatasetGroup],
                          keys: Sequence[str] | None = None) -> list[FuseRecord]:
    """Every fusion record persisted for these dataset groups (no computation); with
    ``keys``, only runs that fused some of these embedding keys. Runs whose val was carved
    by the earlier, patient-unaware rule are superseded and not listed, and so is a method of
    an earlier (one id per fraction and seed) run, or a run of an earlier linear solver or
    DVME head version, that was recomputed since; a baseline an earlier featstore keyed with
    the head's settings (``dim``) is listed once, and not once it is stored under today's id."""
    wanted = None if keys is None else set(keys)
    out = []
    for ds in datasets:
        has_val = bool((ds.index["split"] == "val").any())
        runs = ds.fusion_runs.by_id()

        def what(r: dict[str, Any]) -> tuple:
            return (r["method"], tuple(r.get("keys", [])), r["fraction"], r["seed"])

        current = {what(r) for run in runs.values() if "config" in run
                   for r in run.get("records", [])}
        listed: set[str | None] = set()
        for run in runs.values():
            legacy = "config" not in run
            if legacy and not has_val:
                continue  # an earlier run whose val was carved by the superseded rule
            keyed = None if legacy else run_key(_keyed(run["config"]))
            if not legacy and (_made_again(run["config"], runs) or keyed in listed):
                continue  # recomputed since by a later solver or head, or a baseline
            listed.add(keyed)  # listed already (once keyed by each head setting it had)
            for r in run.get("records", []):
                if legacy and what(r) in current:
                    continue  # recomputed since, under its own id
                if wanted is None or wanted & set(r.get("keys", [])):
                    rec = stored_fusion_record(r)
                    if not rec.config and "config" in run:  # saved before records had it
                        rec.config = record_config(run["config"])
                    out.append(rec)
    return out
