"""Results rendered for people (rich tables, notes) and for machines (JSON records).

The CLI prints what these functions return; the future ``featstore report`` builds on them.
Nothing here computes a result: every function takes records a stage returned.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from featstore.report.numbers import ci, mean_sd
from featstore.runkeys import VARIANT_LEGEND, row_labeller

PER_LABEL_PREFIX = "auc["
SHORT_NAMES = {"balanced_accuracy": "bal_acc", "accuracy": "acc"}
RANDOM_NOTE = ("backbones marked [bold]random[/] have untrained weights: their numbers test "
               "the pipeline, not transfer from pretraining.")


def to_json(obj: Any) -> str:
    """JSON text of records (dataclasses with ``to_dict``, dicts, lists of either)."""
    def plain(o: Any) -> Any:
        if hasattr(o, "to_dict"):
            return o.to_dict()
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        return o
    return json.dumps(plain(obj), default=str)


def _ci(records: Sequence[Any]) -> str:
    """The mean bootstrap CI over seeds, or ``-`` where none was computed."""
    return ci([r.ci_low for r in records], [r.ci_high for r in records])


KEY_LEGEND = ("#<hex>: the start of an embedding set's key, where nothing in words tells two "
              "sets of one backbone apart ('featstore ls' lists them)")
_METHOD_ORDER = ("dvme", "concat", "single")  # fusion rows: the head, then its baselines


def set_names(sets: Iterable[Any], name: Callable[[Any], str] | None = None) -> dict[str, str]:
    """Each embedding set's name in a table, by key: ``name(set)`` (default its alias); where
    sets share one, what tells them apart in words, as ``featstore ls`` says it (``[torch
    resize]`` beside ``[PIL]``, ``[fp32/float16]`` beside ``[fp32/float32]``), and where
    words do not, the start of the key (``#d451f8e9``, :data:`KEY_LEGEND`)."""
    sets = list(sets)
    names = {es.key: (name or (lambda e: e.alias))(es) for es in sets}
    details = {es.key: {"pixels": es.pixels, "compute": f"{es.precision}/{es.dtype}"}
               for es in sets}
    out = {}
    for key, n in names.items():
        twins = [k for k, m in names.items() if m == n]
        differ = [d for d in ("compute", "pixels")
                  if len({details[k][d] for k in twins}) > 1]
        words = [details[key][d] for d in differ]
        alike = [k for k in twins if [details[k][d] for d in differ] == words]
        out[key] = " ".join([n] + ([f"[{', '.join(words)}]"] if words else [])
                            + ([f"#{key[:8]}"] if len(alike) > 1 else []))
    return out


def _set_name(key: str, alias: str, names: Mapping[str, str],
              aliases: Mapping[str, set[str]]) -> str:
    """A record's set as :func:`set_names` names it; else its alias, with its key's start
    where the records hold another set of that alias."""
    if key in names:
        return names[key]
    return alias if len(aliases.get(alias, ())) < 2 else f"{alias} #{key[:8]}"


def legend(names: Iterable[str]) -> list[str]:
    """What the hashes among these row names are (:data:`KEY_LEGEND`, :data:`VARIANT_LEGEND`):
    a line under the table for each kind it shows."""
    names = list(names)
    return [line for mark, line in ((r"(^| )#[0-9a-f]{8}\b", KEY_LEGEND),
                                    (r"(^| )~[0-9a-f]{6,}\b", VARIANT_LEGEND))
            if any(re.search(mark, n) for n in names)]


def _with_legend(table: Table, names: Iterable[str]) -> Table:
    """``table`` with its :func:`legend` as a caption."""
    table.caption = "\n".join(legend(names)) or None
    table.caption_justify = "left"
    return table


def _by_configuration(records: Sequence[Any], subject: Callable[[Any], tuple],
                      order: Callable[[tuple], tuple]) -> dict[tuple, list]:
    """Records grouped into table cells: ``subject(r)`` (the row's subject), the
    configuration label, and the fraction, in ``order`` of (subject, label) and then by
    fraction. Runs of different configurations (:func:`config_variant`) are different rows,
    labelled by what tells them apart (:func:`row_labeller`) where one subject has several;
    within a cell a seed counts once per metric (the same seed again, e.g. at another
    bootstrap count, is not another sample)."""
    label = row_labeller(records, subject)
    cells: dict[tuple, list] = {}
    seen: set[tuple] = set()
    for r in records:
        cell = (*subject(r), label(r), r.fraction)
        if (cell, r.seed, r.metric) in seen:
            continue
        seen.add((cell, r.seed, r.metric))
        cells.setdefault(cell, []).append(r)
    return dict(sorted(cells.items(), key=lambda c: (*order(c[0][:-1]), c[0][-1])))


def probe_tables(records: Sequence[Any], names: Mapping[str, str] | None = None
                 ) -> list[Table]:
    """Backbone x probe x fraction: each metric (mean ± sd over seeds), the primary
    metric's bootstrap 95% CI on test, the chosen hyperparameter; then per-label AUCs.
    ``names``: the sets' names by key (:func:`set_names`); rows go by backbone, probe,
    settings and fraction."""
    if not records:
        return []
    first = records[0]
    metrics = list(dict.fromkeys(r.metric for r in records
                                 if not r.metric.startswith(PER_LABEL_PREFIX)))
    table = Table(title=f"probes on test ({first.dataset}, task {first.task}; "
                        "mean ± sd over seeds, bootstrap 95% CI of the primary metric)")
    for col in ("backbone", "probe", "fraction", "n_train",
                *[SHORT_NAMES.get(m, m) for m in metrics], "95% CI", "chosen", "seeds"):
        table.add_column(col, justify="left" if col in ("backbone", "probe", "chosen")
                         else "right")
    aliases: dict[str, set[str]] = {}
    for r in records:
        aliases.setdefault(r.backbone, set()).add(r.key)

    def backbone(r: Any) -> str:
        return _set_name(r.key, r.backbone, names or {}, aliases)

    def order(row: tuple) -> tuple:  # (backbone, key, probe, [metric,] label)
        return (row[0], row[1], _rank(row[2], ("linear", "knn")), *row[3:])

    cells = _by_configuration(records, lambda r: (backbone(r), r.key, r.probe), order)
    for (name, _, kind, label, fraction), rs in cells.items():
        by_metric: dict[str, list[float]] = {}
        for r in rs:
            by_metric.setdefault(r.metric, []).append(r.value)
        prim = [r for r in rs if r.primary]
        chosen = ", ".join(dict.fromkeys(r.hyperparameter for r in prim))
        table.add_row(escape(name), escape(f"{kind} {label}".rstrip()), f"{fraction:g}",
                      "/".join(sorted({str(r.n_train) for r in prim})),
                      *[mean_sd(by_metric.get(m, [])) for m in metrics], _ci(prim), chosen,
                      str(len(prim)))
    tables = [_with_legend(table, [f"{c[0]} {c[3]}" for c in cells])]
    per_label = [r for r in records if r.metric.startswith(PER_LABEL_PREFIX)]
    if per_label:
        lt = Table(title="per-label AUC (mean ± sd over seeds)")
        for col in ("backbone", "probe", "fraction", "label", "auc"):
            lt.add_column(col)
        label_cells = _by_configuration(
            per_label, lambda r: (backbone(r), r.key, r.probe, r.metric), order)
        for (name, _, kind, metric, label, fraction), rs in label_cells.items():
            lt.add_row(escape(name), escape(f"{kind} {label}".rstrip()), f"{fraction:g}",
                       metric[len(PER_LABEL_PREFIX):-1], mean_sd([r.value for r in rs]))
        tables.append(_with_legend(lt, [f"{c[0]} {c[4]}" for c in label_cells]))
    return tables


def _rank(kind: str, first: Sequence[str]) -> tuple[int, str]:
    """Sort key of a probe or method: those of ``first`` (by prefix) in that order."""
    return next((i for i, f in enumerate(first) if kind.startswith(f)), len(first)), kind


def fusion_table(records: Sequence[Any], names: Mapping[str, str] | None = None
                 ) -> Table | None:
    """Method x fraction: the primary metric (mean ± sd over seeds), its 95% CI and the
    mean DVME attention per backbone on test. ``names``: the sets' names by key
    (:func:`set_names`); rows go by the sets fused, method, settings and fraction."""
    if not records:
        return None
    first = records[0]
    primary = next((r.metric for r in records if r.primary), "metric")
    table = Table(title=f"fusion on test ({first.dataset}, task {first.task}; mean ± sd "
                        "over seeds, bootstrap 95% CI, mean DVME attention on test)")
    for col in ("method", "backbones", "fraction", "n_train", primary,
                "95% CI", "attention", "seeds"):
        table.add_column(col)
    aliases: dict[str, set[str]] = {}
    for r in records:
        for alias, key in zip(r.backbones, r.keys, strict=False):
            aliases.setdefault(alias.partition("#")[0], set()).add(key)

    def fused(r: Any) -> tuple[str, ...]:
        return tuple(_set_name(k, b.partition("#")[0], names or {}, aliases)
                     for b, k in zip(r.backbones, r.keys, strict=False))

    def method(r: Any) -> str:  # single:<alias>: named as its set is
        single = r.method.removeprefix("single:")
        if single == r.method or single not in r.backbones:
            return r.method
        return "single:" + fused(r)[r.backbones.index(single)]

    cells = _by_configuration(
        [r for r in records if r.primary], lambda r: (fused(r), method(r), tuple(r.keys)),
        lambda row: (row[0], _rank(row[1], _METHOD_ORDER), *row[2:]))
    for (sets, name, _, label, fraction), rs in cells.items():
        att = ""
        if rs[0].attention:
            mean = {k: np.mean([r.attention[k] for r in rs]) for k in rs[0].attention}
            shown = dict(zip(rs[0].backbones, sets, strict=False))
            att = "  ".join(f"{shown.get(k, k)}: {v:.2f}" for k, v in mean.items())
        table.add_row(escape(f"{name} {label}".rstrip()), escape("+".join(sets)),
                      f"{fraction:g}", str(rs[0].n_train),
                      mean_sd([r.value for r in rs]), _ci(rs), escape(att), str(len(rs)))
    return _with_legend(table, [" ".join((*c[0], c[1], c[3])) for c in cells])


def heads_line(records: Sequence[Any]) -> str | None:
    """Where the DVME heads of these runs are: saved now, or by the run read back."""
    saved = sorted({r.head_path for r in records if r.head_path and not r.cached})
    earlier = sorted({r.head_path for r in records if r.head_path and r.cached} - set(saved))
    parts = []
    if saved:
        parts.append(f"DVME heads saved: {', '.join(saved)}")
    if earlier:
        parts.append(f"heads of runs read back (saved when they ran): {', '.join(earlier)}")
    return "; ".join(parts) + " (featstore.fusion.DVME.load)" if parts else None


def notes(records: Iterable[Any]) -> list[str]:
    """Warnings a reader of these results needs: random weights, rows left out."""
    records = list(records)
    out = []
    if any(getattr(r, "random_weights", False) for r in records):
        out.append(RANDOM_NOTE)
    by_set: dict[str, int] = {}
    for r in records:
        if getattr(r, "n_excluded", 0):
            name = getattr(r, "backbone", None) or "+".join(r.backbones)
            by_set[name] = r.n_excluded
    out += [f"{name}: {n} rows left out (images skipped at extraction, no embedding)"
            for name, n in by_set.items()]
    unchosen = sorted({getattr(r, "backbone", "") for r in records
                       if getattr(r, "chosen_on_val", True) is False})
    if unchosen:
        out.append(f"{', '.join(unchosen)}: val could not choose (its metric is undefined, "
                   "e.g. val holds one class): the strongest regularisation (probes) or the "
                   "first epoch (finetuning) was kept; give the dataset a val split with "
                   "every class")
    return out


def extract_lines(results: Sequence[Any]) -> list[str]:
    """One line per extracted set: rows x dim, where it went, what was done, how fast."""
    lines = []
    for r in results:
        what = {"cached": "cache hit, nothing to do",
                "resumed": f"resumed: {r.shards_written}/{r.shards_total} shards written",
                "extracted": f"{r.shards_written} shards written"}[r.status]
        if r.shards_by_others:
            what += f", {r.shards_by_others} by other processes"
        if r.recomputed_corrupt:
            what += (f"; shards {r.recomputed_corrupt} failed their checksum and were "
                     "recomputed")
        rate = f", {r.images_per_s:,.0f} img/s" if r.shards_written else ""
        lines.append(f"{r.alias}: {r.rows} x {r.dim} -> {r.dataset}/{r.key[:20]} "
                     f"({what}, {r.seconds:.1f}s{rate})")
    return lines


def skipped_lines(results: Sequence[Any]) -> list[str]:
    """A warning per set that skipped unreadable images, naming the first few."""
    out = []
    for r in results:
        if r.skipped:
            shown = ", ".join(r.skipped[:5]) + (" ..." if len(r.skipped) > 5 else "")
            out.append(f"skipped {len(r.skipped)} unreadable images (stored as missing; "
                       f"probes leave them out): {shown}")
    return out


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def store_table(rows: Sequence[dict[str, Any]], store: str) -> Table:
    """``featstore ls``: dataset x embedding set, size, shards done, status, who and when."""
    table = Table(title=f"featstore {escape(store)}")
    for col in ("dataset", "backbone", "key", "rows x dim", "size", "shards", "status",
                "extracted by"):
        table.add_column(col)
    shared = Counter((r["dataset"], r["backbone"]) for r in rows)
    for r in rows:
        who = "@".join(x for x in (r.get("user"), r.get("host")) if x) or "?"
        if shared[(r["dataset"], r["backbone"])] > 1:  # one alias, several sets: tell them
            pixels = r.get("pixels", "PIL")
            r = {**r, "backbone": f"{r['backbone']} [{r.get('precision', '?')}/"
                                  f"{r.get('dtype', '?')}"
                                  f"{'' if pixels == 'PIL' else ', ' + pixels}]"}
        when = (r.get("finished") or r.get("started") or "")[:16].replace("T", " ")
        table.add_row(escape(r["dataset"]), escape(r["backbone"]), r["key"][:20],
                      f"{r['rows']} x {r['dim']}", _size(r.get("bytes")),
                      f"{r['shards_done']}/{r['shards']}",
                      r["status"] + (f", {r['missing']} missing" if r["missing"] else ""),
                      escape(f"{who} {when}".strip()))
    return table


def copy_table(rows: Sequence[dict[str, Any]], src: str, dst: str) -> Table:
    """``featstore copy``: each set, the shards copied and already there, its status."""
    table = Table(title=f"featstore copy {escape(src)} -> {escape(dst)}")
    for col in ("dataset", "backbone", "key", "copied", "already there", "probe runs",
                "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(escape(r["dataset"]), escape(r["backbone"]), r["key"][:20],
                      str(r["shards_copied"]),
                      f"{r['shards_already_there']}/{r['shards']}", str(r["probe_runs_copied"]),
                      r["status"])
    return table


def info_tables(records: Sequence[dict[str, Any]]) -> list[Table]:
    """``featstore info``: one field/value table per embedding set."""
    tables = []
    for rec in records:
        table = Table(title=escape(f"{rec['dataset']} / {rec['alias']}"), show_header=False)
        table.add_column("field")
        table.add_column("value")
        for k, v in rec.items():
            table.add_row(k, escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v)))
        tables.append(table)
    return tables


def verify_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """``featstore verify``: one line per set, ok or the corrupt shards."""
    def state(r: dict[str, Any]) -> str:
        if r.get("wrong_weights"):
            w = r["wrong_weights"]
            return (f"WRONG WEIGHTS: made from weights {w['made_by'][:12]} but keyed by "
                    f"{w['key'][:12]}; its numbers are not its key's: delete the set and "
                    "extract again")
        if not r["corrupt_shards"]:
            return "ok"
        if r.get("marked_for_recompute"):
            return (f"CORRUPT shards {r['corrupt_shards']}: marked for recompute, run the "
                    "same 'featstore extract'")
        return f"CORRUPT shards {r['corrupt_shards']} (featstore verify --repair)"
    return [escape(f"{r['dataset']}/{r['key'][:20]} {r['backbone']}: {r['shards_checked']} "
                   f"shards {state(r)}") for r in rows]


def models_table(rows: Sequence[dict[str, Any]]) -> Table:
    """``featstore models``: each spec, its dim and source, and whether its weights are here."""
    table = Table(title="backbone specs (any timm model also works: timm:<name>[.<tag>])")
    for col in ("name", "architecture", "dim", "source", "weights"):
        table.add_column(col)
    for r in rows:
        have = f"[green]present[/] {r['present']}" if r["present"] else (
            f"[red]missing[/]: put {r['weights_file']} in {r['where']}")
        table.add_row(r["name"], r["architecture"], str(r["dim"]), r["source"], have)
    return table


def manifest_line(summary: dict[str, Any]) -> str:
    """One line about a built or validated manifest."""
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    written = summary.get("written")
    return (f"{summary['name']}: {summary['rows']} rows ({splits}), task {summary['task']}, "
            f"manifest {summary['sha256'][:12]}" + (f" -> {written}" if written else ": valid"))


def plan_table(plan: Any) -> Table:
    """A pipeline's steps: cached or to run, what each needs, rows and work."""
    table = Table(title=f"plan of {escape(plan.pipeline.name)} ({len(plan.steps)} steps)")
    for col in ("step", "status", "needs", "rows", "work", "note"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for s in plan.steps:
        note = s.note if len(s.note) <= 60 else s.note[:57].rstrip() + "..."
        table.add_row(escape(s.id), "[dim]cached[/]" if s.cached else "[bold]to run[/]",
                      escape(", ".join(s.deps) or "-"), str(s.rows), escape(s.work),
                      escape(note))
    return table


def plan_notes(plan: Any) -> list[str]:
    """Each distinct note of a plan's steps, whole (the table cuts them)."""
    return list(dict.fromkeys(s.note for s in plan.steps if s.note))


def outcome_table(outcomes: Sequence[Any]) -> Table:
    """What became of each step of a pipeline run."""
    table = Table(title="pipeline run")
    for col in ("step", "outcome", "seconds", "runs", "computed", "error"):
        table.add_column(col, justify="right" if col in ("seconds", "runs", "computed")
                         else "left")
    colours = {"failed": "red", "skipped": "yellow", "cached": "dim", "done": "green"}
    for o in outcomes:
        table.add_row(escape(o.step), f"[{colours[o.status]}]{o.status}[/]",
                      f"{o.seconds:.1f}" if o.seconds else "-",
                      str(o.runs) if o.status == "done" else "-",
                      str(o.computed) if o.status == "done" else "-", escape(o.error))
    return table
