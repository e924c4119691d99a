"""What a report shows, collected from a store's persisted runs: per dataset, one row per
backbone and method (cells by labelled fraction, mean ± sd over seeds and the CI), DVME's
attention, and every set's provenance. Computes no run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError, ManifestError
from featstore.report.numbers import ci, mean_sd
from featstore.report.tables import legend, set_names
from featstore.runkeys import config_variant, row_labeller


@dataclass
class Row:
    """One line of a dataset's table: a backbone (or a fusion) and a method."""

    backbone: str
    method: str
    metric: str
    random: bool
    values: dict[float, list[float]] = field(default_factory=dict)  # fraction -> per seed
    ci: dict[float, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.backbone} / {self.method}"


@dataclass
class DatasetReport:
    name: str
    group: Any
    task: str
    rows: list[Row]
    attention: dict[str, Any] | None
    sets: list[Any]
    legend: list[str] = field(default_factory=list)  # what the table's hashes are


def short(alias: str) -> str:
    """A set's alias without a long weights file name (``x@<sha>.pt`` -> ``x``)."""
    head, at, tail = alias.partition("@")
    return head if at and len(tail) > 24 else alias


def _base(alias: str) -> str:
    """``timm:resnet18/64px@random`` -> ``resnet18``."""
    return alias.removeprefix("timm:").split("/")[0].split("@")[0]


def display_names(sets: Sequence[Any]) -> dict[str, str]:
    """Short names for a dataset's sets in tables and legends, by set key: the architecture
    or registered name without its ``timm:`` prefix, size and weights
    (``timm:resnet18/64px@random`` -> ``resnet18``), a finetuned model as ``<arch>
    finetuned <run>``; where two sets would share a name, what tells them apart in words
    (:func:`featstore.report.tables.set_names`: how their pixels were made, precision and
    dtype), else their key's start."""
    def name(es) -> str:
        p = es.provenance
        if p.finetuned_run is not None:
            return f"{p.architecture or '?'} finetuned {p.finetuned_run[:8]}"
        return _base(short(es.alias))

    return set_names(sets, name)


def _groups(store, datasets: Sequence[Any] | None) -> list[tuple[str, Any]]:
    """(name, dataset group or None when the store does not hold it yet) of each dataset:
    every one of the store, or those named (a ``--data`` value, a group name, or a
    ``(data, root, task)`` triple as a pipeline gives it)."""
    from featstore.data import load_dataset
    from featstore.errors import NotExtractedError

    if datasets is None:
        groups = store.datasets()
        if not groups:
            raise FeatstoreError(f"store {store.root}: no datasets (run 'featstore extract' "
                                 "or 'featstore run' first)")
        return [(g.attrs.get("name", g.name), g) for g in groups]
    out = []
    for item in datasets:
        data, root, task = item if isinstance(item, tuple) else (item, None, None)
        try:
            manifest = load_dataset(data, root=root, task=task)
        except ManifestError as e:
            if isinstance(item, tuple):  # a pipeline's dataset whose files are not here:
                out.append(_group_without_data(store, str(data), e))  # its group by name
                continue
            if Path(data).exists():
                raise
            out.append((data, store.find_dataset(data)))  # a group name, without the data
            continue
        try:
            out.append((manifest.name, store.dataset(manifest)))
        except NotExtractedError:
            if not isinstance(item, tuple):
                raise
            out.append((manifest.name, None))  # a pipeline's dataset not run yet
    seen: set[str] = set()  # one dataset named twice (two paths, two pipeline entries) is one
    unique = []
    for name, group in out:
        which = group.name if group is not None else f"?{name}"
        if which not in seen:
            seen.add(which)
            unique.append((name, group))
    return unique


def _group_without_data(store, data: str, error: Exception) -> tuple[str, Any]:
    """A pipeline dataset's group found by the name its files would give it (``alpha.npz``,
    ``KIND:/data/alpha`` -> ``alpha``), for a report written where the images are not.

    Raises
    ------
    FeatstoreError
        No group, or several, carry that name (the files' own error is quoted).
    """
    from featstore.errors import NotExtractedError

    name = Path(data.split(":", 1)[-1].rstrip("/")).stem
    try:
        return name, store.find_dataset(name)
    except NotExtractedError as e:
        raise FeatstoreError(f"dataset {data}: its files cannot be read here ({error}), and "
                             f"the store's groups do not tell it by name ({e})") from None


def collect(store, datasets: Sequence[str] | None = None,
            grid: dict[str, dict[str, Any]] | None = None) -> list[DatasetReport]:
    """The persisted runs of ``store`` (every dataset, or those ``datasets`` name), grouped
    into table rows. ``grid``: per stage (probe, fuse, finetune), the fractions, seeds (and
    probes) to keep, as a pipeline's stages give them; a stage absent from it is left out."""

    def wanted(stage: str, r: Any, kind: str | None = None) -> bool:
        if not r.primary:
            return False
        if grid is None:
            return True
        g = grid.get(stage)
        return g is not None and r.fraction in g["fractions"] and r.seed in g["seeds"] and (
            kind is None or kind in g.get("probes", [kind]))

    return [_dataset_report(ds, wanted) if ds is not None else
            DatasetReport(name, None, "", [], None, []) for name, ds in _groups(store, datasets)]


def _dataset_report(ds, wanted) -> DatasetReport:
    """One dataset's rows: a row per embedding set (by key, never by alias alone) or fusion
    and method, and per probe configuration where several were run; a seed counts once per
    row and fraction."""
    from featstore.finetune import stored_finetune_records
    from featstore.fusion import stored_fusion_records
    from featstore.probe import stored_records

    sets = [s for s in ds.embedding_sets() if s.complete]
    names = display_names(sets)
    random_keys = {s.key for s in sets if random_weights(s)} | finetuned_from_random(ds, sets)
    rows: dict[tuple[str, str, str], Row] = {}
    seen: dict[tuple[str, str, str], set[tuple[float, int]]] = {}

    def add(backbone: str, method: str, r: Any, random: bool, variant: str = "") -> None:
        which = (backbone, method, variant)
        if (r.fraction, r.seed) in seen.setdefault(which, set()):
            return  # the same seed again (e.g. another bootstrap count): counted once
        seen[which].add((r.fraction, r.seed))
        row = rows.setdefault(which, Row(backbone, method, r.metric, random))
        row.values.setdefault(r.fraction, []).append(r.value)
        row.ci.setdefault(r.fraction, []).append((r.ci_low, r.ci_high))

    def name(key: str, alias: str) -> str:
        return names.get(key, _base(short(alias)))

    runs = ([r for r in stored_records(sets) if wanted("probe", r, r.probe)]
            + [r for r in stored_finetune_records(ds) if wanted("finetune", r)])
    label = row_labeller(runs, lambda r: (r.key, r.probe))
    for r in runs:  # a finetuning run: key is the starting model's, probe "finetune"
        add(name(r.key, r.backbone), " ".join(filter(None, (r.probe, label(r)))), r,
            r.key in random_keys or bool(r.random_weights), config_variant(r.config))
    fusions = [r for r in stored_fusion_records([ds]) if wanted("fuse", r)]
    fused = [r for r in fusions if not r.method.startswith("single:")]
    label = row_labeller(fused, lambda r: (r.method, tuple(r.keys)))
    for r in fused:
        sets_fused = " + ".join(name(k, b) for k, b in zip(r.keys, r.backbones, strict=False))
        add(sets_fused, " ".join(filter(None, (r.method, label(r)))), r,
            bool(r.random_weights), config_variant(r.config))
    attention = _attention(fusions, name)
    ordered = sorted(rows.values(), key=lambda r: (" + " in r.backbone, r.backbone,
                                                    r.method))  # fusions last
    return DatasetReport(ds.attrs.get("name", ds.name), ds, str(ds.attrs.get("task", "")),
                         ordered, attention, sets,
                         legend([f"{r.backbone} {r.method}" for r in ordered]))


def _attention(fusions: Sequence[Any], name) -> dict[str, Any] | None:
    """DVME's attention on test at the largest fraction, averaged over seeds, for the
    fusion (method and sets) with the most runs there."""
    groups: dict[tuple, list[Any]] = {}
    for r in fusions:
        if r.method.startswith("dvme") and r.attention:
            groups.setdefault((r.method, tuple(r.keys), config_variant(r.config)),
                              []).append(r)
    if not groups:
        return None

    def at_top(rs: list[Any]) -> list[Any]:
        top = max(r.fraction for r in rs)
        return [r for r in rs if r.fraction == top]

    at = max((at_top(rs) for rs in groups.values()), key=len)
    names = {b: name(k, b) for k, b in zip(at[0].keys, at[0].backbones, strict=False)}
    classes = sorted({c for r in at for c in (r.attention_per_class or {})},
                     key=lambda c: (len(c), c))  # 2 before 10
    return {"method": at[0].method, "fraction": at[0].fraction, "seeds": len(at),
            "overall": _mean_maps([r.attention for r in at], names),
            "per_class": {c: _mean_maps([r.attention_per_class[c] for r in at
                                         if c in (r.attention_per_class or {})], names)
                          for c in classes}}


def _mean_maps(maps: Sequence[dict[str, float]], names: dict[str, str]) -> dict[str, float]:
    keys = list(maps[0]) if maps else []
    return {names.get(k, k): float(np.mean([m[k] for m in maps if k in m])) for k in keys}


def finetuned_from_random(ds, sets: Sequence[Any]) -> set[str]:
    """Keys of the sets embedded by a model finetuned from random weights."""
    tuned = [s for s in sets if s.provenance.finetuned_run is not None]
    if not tuned:
        return set()
    runs = ds.finetune_runs.by_id()
    out = set()
    for es in tuned:
        prefix = es.provenance.finetuned_run
        run = next((r for rid, r in runs.items() if rid.startswith(prefix)), {})
        if any(rec.get("random_weights") for rec in run.get("records", [])):
            out.add(es.key)
    return out


def table_cells(rep: DatasetReport) -> tuple[list[float], list[list[str]], list[list[bool]]]:
    """The fractions (columns), the cells (``mean ± sd (n) [CI]``) and which cell is the
    best mean of its column."""
    fractions = sorted({f for row in rep.rows for f in row.values})
    means = np.full((len(rep.rows), len(fractions)), np.nan)
    cells = []
    for i, row in enumerate(rep.rows):
        line = []
        for j, f in enumerate(fractions):
            if f not in row.values:
                line.append("")
                continue
            vals = row.values[f]
            means[i, j] = np.nanmean(vals) if not np.isnan(vals).all() else np.nan
            pairs = row.ci[f]
            line.append(f"{mean_sd(vals, n=True)} "
                        f"{ci([p[0] for p in pairs], [p[1] for p in pairs], none='')}".strip())
        cells.append(line)
    best = np.zeros_like(means, bool)
    for j in range(len(fractions)):
        col = means[:, j]
        if not np.isnan(col).all():
            best[:, j] = col == np.nanmax(col)
    return fractions, cells, best.tolist()


def random_weights(es) -> bool:
    """Whether an embedding set was extracted with random (untrained) weights."""
    return bool(es.provenance.random_weights)


def provenance_rows(rep: DatasetReport) -> list[dict[str, str]]:
    """Where every set of a dataset came from; ``random`` says why its numbers are not
    about pretraining (random weights, or finetuned from them)."""
    if rep.group is None:
        return []
    tuned_random = finetuned_from_random(rep.group, rep.sets)
    names = display_names(rep.sets)
    out = []
    for es in rep.sets:
        p = es.provenance
        prep = p.preprocessing
        random = "RANDOM WEIGHTS" if p.random_weights else ""
        if es.key in tuned_random:
            random = "FINETUNED FROM RANDOM WEIGHTS"
        out.append({
            "set": names[es.key], "alias": short(es.alias), "key": es.key[:12],
            "architecture": p.architecture,
            "weights": str(p.weights),
            "weights sha256": p.weights_sha256[:16],
            "preprocessing": (f"{prep.get('input_size')}px, crop {prep.get('crop_pct')}, "
                              f"{prep.get('interpolation')}, mean {prep.get('mean')}, std "
                              f"{prep.get('std')}") if prep else "",
            "compute": f"{p.precision} on {p.device}, stored {es.attrs.get('dtype', '')}",
            "versions": ", ".join(f"{k} {v}" for k, v in p.versions.items()),
            "made": f"{p.user or '?'}@{p.host or '?'} {p.started or ''}",
            "random": random})
    return out
