"""``featstore report``: the study's tables and figures from a store's persisted runs.

Reads what the stages persisted (probe, finetuning and fusion runs, each set's provenance)
and writes one folder: ``report.html`` (a single file, the figures embedded), ``report.md``
(the figures beside it as PNG) and the PNGs. Computes no run: a run that is not in the
store is not in the report. Figures are drawn with matplotlib's Agg backend (no display).

- per dataset, backbone x method x fraction: mean ± sd over seeds, the bootstrap 95% CI on
  test (averaged over seeds), the best mean per fraction marked;
- ``fractions.png``: the study's main figure, metric against the labelled fraction (log x),
  one line per backbone and method, error bars ± sd over seeds, a panel per dataset;
- ``attention.png``: DVME's mean attention per backbone on test, overall and per class;
- ``map.png``: t-SNE of a sample of one embedding set per dataset, coloured by label;
- provenance of every set: weights file and sha256, preprocessing, versions, who and where;
  random weights flagged.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError, ManifestError
from featstore.report.numbers import ci, mean_sd
from featstore.runkeys import config_variant

# every panel is framed in this colour, and nothing else is drawn in it: a test counts the
# frames in a PNG to check its panels
FRAME = "#262626"
STYLE = {"axes.edgecolor": FRAME, "axes.linewidth": 1.4, "xtick.color": "#000000",
         "ytick.color": "#000000", "axes.grid": True, "grid.color": "#e0e0e0",
         "font.size": 9, "legend.fontsize": 7, "figure.dpi": 110}


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
    finetuned <run>``; where two sets would share a name, their precision and dtype, else
    their key prefix, tell them apart."""
    names, detail = {}, {}
    for es in sets:
        p = es.attrs.get("provenance", {})
        if str(p.get("backbone", "")).startswith("finetuned:"):
            run = p["backbone"].removeprefix("finetuned:")[:8]
            names[es.key] = f"{p.get('architecture', '?')} finetuned {run}"
        else:
            names[es.key] = _base(short(es.alias))
        detail[es.key] = f"{p.get('precision', 'fp32')}/{es.attrs.get('dtype', '?')}"
    out = {}
    for key, n in names.items():
        twins = [k for k, m in names.items() if m == n]
        if len(twins) == 1:
            out[key] = n
        elif len({detail[k] for k in twins}) == len(twins):
            out[key] = f"{n} [{detail[key]}]"
        else:
            out[key] = f"{n} #{key[:6]}"
    return out


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
    random_keys = {s.key for s in sets if _random(s)} | _finetuned_from_random(ds, sets)
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

    probes = [r for r in stored_records(sets) if wanted("probe", r, r.probe)]
    variants: dict[tuple[str, str], set[str]] = {}
    for r in probes:
        variants.setdefault((r.key, r.probe), set()).add(config_variant(r.config))
    for r in probes:
        v = config_variant(r.config)
        label = r.probe + (f" ~{v}" if len(variants[(r.key, r.probe)]) > 1 else "")
        add(name(r.key, r.backbone), label, r, r.key in random_keys or r.random_weights, v)
    finetunes = [r for r in stored_finetune_records(ds) if wanted("finetune", r)]
    recipes = {(r.config or {}).get("recipe") for r in finetunes}
    for r in finetunes:
        recipe = (r.config or {}).get("recipe")
        add(_base(short(r.backbone)), "finetune" + (f" {recipe}" if len(recipes) > 1 else ""),
            r, bool(r.random_weights), str(recipe))
    fusions = [r for r in stored_fusion_records([ds]) if wanted("fuse", r)]
    fusion_variants: dict[tuple, set[str]] = {}
    for r in fusions:
        fusion_variants.setdefault((r.method, tuple(r.keys)), set()).add(
            config_variant(r.config))
    for r in fusions:
        if not r.method.startswith("single:"):
            fused = " + ".join(name(k, b) for k, b in zip(r.keys, r.backbones, strict=False))
            v = config_variant(r.config)
            several = len(fusion_variants[(r.method, tuple(r.keys))]) > 1
            add(fused, r.method + (f" ~{v}" if several else ""), r, bool(r.random_weights), v)
    attention = _attention(fusions, name)
    ordered = sorted(rows.values(), key=lambda r: (" + " in r.backbone, r.backbone,
                                                    r.method))  # fusions last
    return DatasetReport(ds.attrs.get("name", ds.name), ds, str(ds.attrs.get("task", "")),
                         ordered, attention, sets)


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


def _finetuned_from_random(ds, sets: Sequence[Any]) -> set[str]:
    """Keys of the sets embedded by a model finetuned from random weights."""
    tuned = [s for s in sets if str(s.attrs.get("provenance", {}).get("backbone", ""))
             .startswith("finetuned:")]
    if not tuned:
        return set()
    runs = ds.finetune_runs.by_id()
    out = set()
    for es in tuned:
        prefix = es.attrs["provenance"]["backbone"].removeprefix("finetuned:")
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


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def _grid(n: int, max_cols: int = 2) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def fraction_figure(reports: Sequence[DatasetReport], path: Path) -> int:
    """Metric against labelled fraction, a panel per dataset; returns the panel count."""
    plt = _plt()
    reps = [r for r in reports if r.rows]
    if not reps:
        return 0
    nr, nc = _grid(len(reps))
    fig, axes = plt.subplots(nr, nc, figsize=(5.4 * nc + 3.2, 4.2 * nr), squeeze=False)
    for ax in axes.flat[len(reps):]:
        ax.remove()
    backbones = list(dict.fromkeys(r.backbone for rep in reps for r in rep.rows))
    cmap = plt.get_cmap("tab10" if len(backbones) <= 10 else "tab20")
    colour = {b: cmap(i % cmap.N) for i, b in enumerate(backbones)}
    styles = {"linear": ("-", "o"), "knn": (":", "s"), "concat": ("-.", "^")}
    # each finetuning recipe its own marker (and so its own legend entry's look)
    recipes = sorted({r.method for rep in reps for r in rep.rows
                      if r.method.startswith("finetune")})
    styles.update({m: ("--", "*PXhv<>"[i % 7]) for i, m in enumerate(recipes)})
    handles: dict[str, Any] = {}
    for ax, rep in zip(axes.flat, reps, strict=False):
        for row in sorted(rep.rows, key=lambda r: (r.backbone, r.method)):
            fr = sorted(row.values)
            mean = [np.nanmean(row.values[f]) for f in fr]
            sd = [np.nanstd(row.values[f], ddof=1) if len(row.values[f]) > 1 else 0.0
                  for f in fr]
            ls, marker = styles.get(row.method, ("--", "D" if "dvme" in row.method else "*"))
            tuned = row.method.startswith("finetune")  # often one point: drawn on top
            h = ax.errorbar(fr, mean, yerr=sd, marker=marker, ms=10 if tuned else 4,
                            capsize=3, lw=1.4, ls=ls, color=colour[row.backbone],
                            label=row.label, zorder=5 if tuned else 2)
            handles.setdefault(row.label, h)
        ax.set_xscale("log")
        fr_all = sorted({f for row in rep.rows for f in row.values})
        ax.set_xticks(fr_all, [f"{f:g}" for f in fr_all])
        ax.set_xlim(min(fr_all) / 1.25, max(fr_all) * 1.25)  # end markers stay whole
        ax.minorticks_off()
        ax.set_xlabel("fraction of train labels (log scale)")
        ax.set_ylabel(f"{rep.rows[0].metric} on test (mean ± sd over seeds)")
        ax.set_title(f"{rep.name} ({rep.task})")
    fig.tight_layout(rect=(0, 0, 1 - 3.3 / (5.4 * nc + 3.2), 1))
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=7,
               title="backbone / method", title_fontsize=8, frameon=False)
    fig.savefig(path)
    plt.close(fig)
    return len(reps)


def attention_figure(reports: Sequence[DatasetReport], path: Path) -> int:
    """DVME mean attention per backbone: overall, and per class where the task has
    classes; returns the panel count."""
    plt = _plt()
    reps = [r for r in reports if r.attention]
    if not reps:
        return 0
    cols = 2 if any(r.attention["per_class"] for r in reps) else 1
    fig, axes = plt.subplots(len(reps), cols, figsize=(5.6 * cols, 3.6 * len(reps)),
                             squeeze=False)
    panels = 0
    for (ax_all, *ax_cls), rep in zip(axes, reps, strict=True):
        att = rep.attention
        names = list(att["overall"])
        ax_all.bar(range(len(names)), [att["overall"][n] for n in names],
                   color=[plt.get_cmap("tab10")(i) for i in range(len(names))])
        ax_all.axhline(1 / len(names), color="#888888", ls="--", lw=1,
                       label="uniform (1 / backbones)")
        ax_all.set_xticks(range(len(names)), names, rotation=15, ha="right")
        ax_all.set_ylabel("mean attention on test")
        ax_all.set_title(f"{rep.name}: {att['method']} overall (fraction {att['fraction']:g}, "
                         f"{att['seeds']} seeds)")
        ax_all.legend(loc="lower right")
        panels += 1
        if not ax_cls:
            continue
        ax = ax_cls[0]
        classes = list(att["per_class"])
        if not classes:  # multi-label: no per-class split
            ax.remove()
            continue
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar(np.arange(len(classes)) + i * width, [att["per_class"][c].get(n, np.nan)
                                                         for c in classes],
                   width, label=n, color=plt.get_cmap("tab10")(i))
        ax.set_xticks(np.arange(len(classes)) + width * (len(names) - 1) / 2,
                      [f"class {c}" for c in classes])
        ax.set_ylabel("mean attention on test")
        ax.set_title(f"{rep.name}: per class")
        ax.legend(loc="lower right")
        panels += 1
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return panels


def _map_set(rep: DatasetReport):
    """The set the 2-D map shows: the best linear probe at the largest fraction (else the
    first set)."""
    if not rep.sets:
        return None
    names = display_names(rep.sets)
    by_alias = {names[s.key]: s for s in rep.sets}
    linear = [r for r in rep.rows if r.method == "linear" and r.backbone in by_alias]
    if linear:
        top = max(max(r.values) for r in linear)
        best = max((r for r in linear if top in r.values),
                   key=lambda r: np.nanmean(r.values[top]))
        return by_alias[best.backbone]
    return rep.sets[0]


def map_figure(reports: Sequence[DatasetReport], path: Path, *, rows: int = 1000,
               seed: int = 0) -> int:
    """t-SNE of a sample of one set per dataset, coloured by label; the panel count."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    plt = _plt()
    chosen = [(rep, es) for rep in reports if (es := _map_set(rep)) is not None]
    if not chosen:
        return 0
    nr, nc = _grid(len(chosen))
    fig, axes = plt.subplots(nr, nc, figsize=(5.2 * nc, 4.6 * nr), squeeze=False)
    for ax in axes.flat[len(chosen):]:
        ax.remove()
    for ax, (rep, es) in zip(axes.flat, chosen, strict=False):
        keep = np.flatnonzero(~es.missing_mask())
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(keep, size=min(rows, len(keep)), replace=False))
        X = np.asarray(es.read(take), np.float32)  # the sample's shards only
        X = (X - X.mean(0)) / (X.std(0) + 1e-6)
        X = PCA(n_components=min(50, X.shape[1], len(X) - 1), random_state=seed).fit_transform(X)
        xy = TSNE(n_components=2, perplexity=min(30, (len(X) - 1) / 3), init="pca",
                  random_state=seed).fit_transform(X)
        labels = rep.group.index["labels"][take, 0]
        names = list(rep.group.attrs.get("label_names") or [])
        for i, c in enumerate(np.unique(labels)):
            m = labels == c
            name = (f"{names[0]}={c}" if rep.task == "multilabel" and names else f"class {c}")
            ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, color=plt.get_cmap("tab10")(i),
                       label=name)
        ax.set_xticks([])
        ax.set_yticks([])
        flag = " [random weights]" if _random(es) or es.key in (
            _finetuned_from_random(rep.group, [es])) else ""
        ax.set_title(f"{rep.name}: {display_names(rep.sets)[es.key]}{flag}\n"
                     f"t-SNE of {len(take)} rows", fontsize=9)
        ax.legend(loc="best", markerscale=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return len(chosen)


# ----------------------------------------------------------------------------- provenance


def _random(es) -> bool:
    return bool(es.attrs.get("provenance", {}).get("random_weights"))


def provenance_rows(rep: DatasetReport) -> list[dict[str, str]]:
    """Where every set of a dataset came from; ``random`` says why its numbers are not
    about pretraining (random weights, or finetuned from them)."""
    if rep.group is None:
        return []
    tuned_random = _finetuned_from_random(rep.group, rep.sets)
    names = display_names(rep.sets)
    out = []
    for es in rep.sets:
        p = es.attrs.get("provenance", {})
        prep = p.get("preprocessing", {})
        random = "RANDOM WEIGHTS" if p.get("random_weights") else ""
        if es.key in tuned_random:
            random = "FINETUNED FROM RANDOM WEIGHTS"
        versions = p.get("versions", {})
        out.append({
            "set": names[es.key], "alias": short(es.alias), "key": es.key[:12],
            "architecture": str(p.get("architecture", "")),
            "weights": str(p.get("weights", "")),
            "weights sha256": str(p.get("weights_sha256", ""))[:16],
            "preprocessing": (f"{prep.get('input_size')}px, crop {prep.get('crop_pct')}, "
                              f"{prep.get('interpolation')}, mean {prep.get('mean')}, std "
                              f"{prep.get('std')}") if prep else "",
            "compute": f"{p.get('precision', '')} on {p.get('device', '')}, stored "
                       f"{es.attrs.get('dtype', '')}",
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "made": f"{p.get('user') or '?'}@{p.get('host', '?')} {p.get('started', '')}",
            "random": random})
    return out


# ----------------------------------------------------------------------------- documents


def _png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def build_report(store, output: str | Path, *, datasets: Sequence[str] | None = None,
                 grid: dict[str, dict[str, Any]] | None = None,
                 title: str = "featstore report", tsne_rows: int = 1000) -> list[Path]:
    """Write ``report.html``, ``report.md`` and the figures of ``store``'s persisted runs
    into ``output`` (``datasets`` and ``grid`` narrow them, as for :func:`collect`);
    returns the files written.

    Raises
    ------
    FeatstoreError
        The store has no datasets, or one of ``datasets`` is not in it.
    """
    import time
    from importlib.metadata import version

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise FeatstoreError(f"-o {out}: a file is there; the report is a folder (report.html, "
                             "report.md and its figures)")
    out.mkdir(parents=True, exist_ok=True)
    reports = collect(store, datasets, grid)
    figures: list[tuple[str, Path, str, int]] = []
    for name, draw, caption in (
        ("fractions.png", fraction_figure, "Metric on test against the fraction of train "
         "labels (log scale), mean ± sd over seeds: the study's main figure."),
        ("attention.png", attention_figure, "DVME: mean attention weight per backbone on "
         "test, overall and per class (uniform = 1 / backbones)."),
        ("map.png", lambda r, p: map_figure(r, p, rows=tsne_rows), "t-SNE of a sample of "
         "one embedding set per dataset (the best linear probe at the largest fraction), "
         "coloured by label."),
    ):
        path = out / name
        panels = draw(reports, path)
        if panels:
            figures.append((name, path, caption, panels))
        elif path.exists():
            path.unlink()  # a figure of an earlier report that has nothing to show now
    any_random = any(row.random for rep in reports for row in rep.rows) or any(
        _random(s) for rep in reports for s in rep.sets)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta = f"store {store.root}; featstore {version('featstore')}; written {stamp}"
    md = _markdown(title, meta, reports, figures, any_random)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html(title, meta, reports, figures, any_random))
    return [out / "report.html", out / "report.md", *[f[1] for f in figures]]


NO_RUNS = "No probe, finetuning or fusion runs stored yet."
NOT_IN_STORE = "Not in the store yet: run the pipeline first."
RANDOM_BANNER = ("Some backbones have RANDOM (untrained) weights: their numbers test the "
                 "pipeline, not transfer from pretraining.")
LEGEND = ("Cells: primary metric on test, mean ± sd over seeds (n = seeds), then the "
          "bootstrap 95% CI on test averaged over seeds. The best mean of each fraction is "
          "marked.")


# what Markdown reads as markup in a name: backslash, code, emphasis, HTML, table bars,
# underscores at a word's edge, a link's "](", a heading's leading "#"
_MD_SPECIAL = re.compile(r"([\\`*<>|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|\](?=\()|^#)")


def _md(text: str) -> str:
    """User text (dataset, backbone, method names; the title) as literal Markdown: what
    Markdown would read as markup is escaped, as the HTML escapes it."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def _markdown(title, meta, reports, figures, any_random) -> str:
    lines = [f"# {_md(title)}", "", _md(meta), ""]
    if any_random:
        lines += [f"> **Warning:** {RANDOM_BANNER}", ""]
    lines += [LEGEND, ""]
    for rep in reports:
        lines += [f"## {_md(rep.name)}" + (f" ({rep.task})" if rep.task else ""), ""]
        if not rep.rows:
            lines += [NO_RUNS if rep.group is not None else NOT_IN_STORE, ""]
        else:
            fractions, cells, best = table_cells(rep)
            lines.append("| backbone | method | " + " | ".join(f"fraction {f:g}"
                                                            for f in fractions) + " |")
            lines.append("|---|---|" + "---|" * len(fractions))
            for row, line, b in zip(rep.rows, cells, best, strict=True):
                name = _md(row.backbone) + (" (random)" if row.random else "")
                vals = [f"**{c}** (best)" if bb and c else c for c, bb in zip(line, b,
                                                                                strict=True)]
                lines.append(f"| {name} | {_md(row.method)} | " + " | ".join(vals) + " |")
            lines.append("")
        prov = provenance_rows(rep)
        if prov:
            lines += [f"### Provenance of {_md(rep.name)}'s embedding sets", "",
                      "| " + " | ".join(prov[0]) + " |", "|" + "---|" * len(prov[0])]
            for p in prov:
                vals = [f"**{_md(v)}**" if k == "random" and v else _md(v)
                        for k, v in p.items()]
                lines.append("| " + " | ".join(vals) + " |")
            lines.append("")
    for name, _, caption, _ in figures:
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.best{font-weight:bold;background:#e8f5e9}
.random{color:#b00020;font-weight:bold}.banner{background:#fdecea;border:1px solid #b00020;
padding:.6em 1em;color:#b00020;font-weight:bold}img{max-width:100%}.meta{color:#666}"""


def _html(title, meta, reports, figures, any_random) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>",
             f"<p class='meta'>{e(meta)}</p>"]
    if any_random:
        parts.append(f"<p class='banner'>{e(RANDOM_BANNER)}</p>")
    parts.append(f"<p>{e(LEGEND)}</p>")
    for rep in reports:
        parts.append(f"<h2>{e(rep.name)}" + (f" ({e(rep.task)})" if rep.task else "")
                     + "</h2>")
        if not rep.rows:
            parts.append(f"<p>{e(NO_RUNS if rep.group is not None else NOT_IN_STORE)}</p>")
        else:
            fractions, cells, best = table_cells(rep)
            parts.append("<table><tr><th>backbone</th><th>method</th>" + "".join(
                f"<th>fraction {f:g}</th>" for f in fractions) + "</tr>")
            for row, line, b in zip(rep.rows, cells, best, strict=True):
                flag = " <span class='random'>random</span>" if row.random else ""
                parts.append(f"<tr><td>{e(row.backbone)}{flag}</td><td>{e(row.method)}</td>"
                             + "".join(f"<td class='best'>{e(c)}</td>" if bb and c else
                                       f"<td>{e(c)}</td>" for c, bb in zip(line, b,
                                                                          strict=True))
                             + "</tr>")
            parts.append("</table>")
        prov = provenance_rows(rep)
        if prov:
            parts.append(f"<h3>Provenance of {e(rep.name)}'s embedding sets</h3><table><tr>"
                         + "".join(f"<th>{e(k)}</th>" for k in prov[0]) + "</tr>")
            for p in prov:
                parts.append("<tr>" + "".join(
                    f"<td class='random'>{e(v)}</td>" if k == "random" and v else
                    f"<td>{e(v)}</td>" for k, v in p.items()) + "</tr>")
            parts.append("</table>")
    for name, path, caption, _ in figures:
        parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{_png(path)}'>"
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
