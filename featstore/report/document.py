"""The report as documents: ``report.html`` (one file, the figures embedded) and
``report.md`` (the figures beside it as PNG), from what :mod:`featstore.report.collect`
gathers and :mod:`featstore.report.figures` draws."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featstore.errors import FeatstoreError
from featstore.outputs import new_output
from featstore.report.collect import collect, provenance_rows, random_weights, table_cells
from featstore.report.figures import attention_figure, fraction_figure, map_figure


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
    reports = collect(store, datasets, grid)  # a refusal here leaves no folder behind
    any_random = any(row.random for rep in reports for row in rep.rows) or any(
        random_weights(s) for rep in reports for s in rep.sets)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta = f"store {store.root}; featstore {version('featstore')}; written {stamp}"
    with new_output(out, "-o"):
        figures = _figures(reports, out, tsne_rows)
        (out / "report.md").write_text(_markdown(title, meta, reports, figures, any_random))
        (out / "report.html").write_text(_html(title, meta, reports, figures, any_random))
    return [out / "report.html", out / "report.md", *[f[1] for f in figures]]


def _figures(reports, out: Path, tsne_rows: int) -> list[tuple[str, Path, str, int]]:
    """Draw the report's figures into ``out``: (file name, path, caption, panels) of each
    that has something to show."""
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
    return figures


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
            lines += [f"*{_md(line)}*" for line in rep.legend] + ([""] if rep.legend else [])
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
            parts += [f"<p class='meta'>{e(line)}</p>" for line in rep.legend]
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
