"""The report's figures, drawn with matplotlib's Agg backend (no display): ``fractions.png``
(metric against the labelled fraction, the study's main figure), ``attention.png`` (DVME's
mean attention) and ``map.png`` (t-SNE of one embedding set per dataset)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featstore.report.collect import (
    DatasetReport,
    display_names,
    finetuned_from_random,
    random_weights,
)

# every panel is framed in this colour, and nothing else is drawn in it: a test counts the
# frames in a PNG to check its panels
FRAME = "#262626"
STYLE = {"axes.edgecolor": FRAME, "axes.linewidth": 1.4, "xtick.color": "#000000",
         "ytick.color": "#000000", "axes.grid": True, "grid.color": "#e0e0e0",
         "font.size": 9, "legend.fontsize": 7, "figure.dpi": 110}


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
        flag = " [random weights]" if random_weights(es) or es.key in (
            finetuned_from_random(rep.group, [es])) else ""
        ax.set_title(f"{rep.name}: {display_names(rep.sets)[es.key]}{flag}\n"
                     f"t-SNE of {len(take)} rows", fontsize=9)
        ax.legend(loc="best", markerscale=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return len(chosen)
