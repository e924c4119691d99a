"""What every command shares: the Typer app, the consoles, option types (choices as enums, so
``--help`` lists them) and the print helpers."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from featstore import choices, options
from featstore.errors import FeatstoreError
from featstore.grid import GridSettings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="featstore: cache frozen embeddings of pretrained backbones and probe them.",
)
out = Console(soft_wrap=True, emoji=False)
if not out.is_terminal:  # pipes and files get whole tables, not 80-column truncation
    out = Console(soft_wrap=True, width=200, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)


def _enum(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    return StrEnum(name, {v: v for v in values})


Precision = _enum("Precision", choices.PRECISIONS)
Dtype = _enum("Dtype", choices.DTYPES)
OnError = _enum("OnError", choices.ON_ERROR)
Task = _enum("Task", choices.TASKS)
OrdinalDecode = _enum("OrdinalDecode", choices.ORDINAL_DECODES)
Resize = _enum("Resize", choices.RESIZES)
Decode = _enum("Decode", choices.DECODES)


def output_path(text: str | Path) -> Path:
    """An output path option's value (``-o``, ``--heads-dir``): a path, never the empty text
    an unset shell variable leaves (``-o $OUT``), which would write into the current folder
    (a default arrives as a Path already)."""
    if isinstance(text, str) and not text.strip():
        raise typer.BadParameter("expected a path, not empty text")
    return Path(text)


def split_option(text: str, option: str, kind: Callable = float) -> list:
    """Comma-separated values of an option (``0.01,0.1,1.0``); the stage checks them."""
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FeatstoreError(f"{option} {text!r}: expected a comma-separated list") from None
    if not values:
        raise FeatstoreError(f"{option} {text!r}: expected at least one value")
    return values


def config_option(cls: type, name: str, *decls: str, **kw) -> typer.models.OptionInfo:
    """The Typer option of a stage config's field ``name``: its help (and, for a plain str
    option, its choices as the metavar) as the config declares them
    (:mod:`featstore.options`)."""
    c = options.constraints(cls)[name]
    if c.choices is not None:
        kw.setdefault("metavar", "[" + "|".join(c.choices) + "]")
    return typer.Option(*decls, help=c.help, **kw)


def choices_metavar(values: tuple[str, ...]) -> str:
    return "[" + "|".join(values) + "],..."


def checked(config: Any) -> Any:
    """``config`` once every value passes the checks its fields declare (those a pipeline
    file's values pass): a verb checks its options before it reads anything."""
    options.check(config, FeatstoreError)
    return config


def grid_settings(fractions: str, seeds: int, bootstrap: int, device: str,
                  cls: type[GridSettings] = GridSettings, **more: Any) -> GridSettings:
    """The grid options of a probing verb (probe, fuse, finetune), checked."""
    return checked(cls(fractions=split_option(fractions, "--fractions"), seeds=seeds,
                       n_bootstrap=bootstrap, device=device, **more))


def _grid(name: str, *decls: str, **kw) -> typer.models.OptionInfo:
    return config_option(GridSettings, name, *decls, **kw)


DEFAULT_GRID = GridSettings()  # the grid options' defaults (--fractions comma-separated)
DEFAULT_FRACTIONS = ",".join(map(str, DEFAULT_GRID.fractions))


DEFAULT_STORE = "./featstore-data"
StoreOpt = Annotated[str, typer.Option(
    "--store", envvar="FEATSTORE_STORE",
    help="Store root: a folder or an fsspec URL (s3://bucket/prefix).")]
def default_results_store() -> str:
    """``$FEATSTORE_RESULTS_STORE``, else ``$XDG_CACHE_HOME/featstore/results``."""
    from featstore.store.backend import default_results_store as default

    return default()


ResultsStoreOpt = Annotated[str | None, typer.Option(
    "--results-store", envvar="FEATSTORE_RESULTS_STORE", show_default="~/.cache/featstore/"
    "results",
    help="Where runs go when --store cannot be written (read-only credentials or mount); "
    "runs found there are read back too.")]
CacheOpt = Annotated[str | None, typer.Option(
    "--cache", envvar="FEATSTORE_CACHE", metavar="DIR",
    help="Keep whole shards of a remote store's sets in DIR (checked against their checksums "
    "on arrival), so the next read of the same set comes from local disk.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DataOpt = Annotated[str, typer.Option(
    "--data", help="A manifest .csv/.parquet, a MedMNIST .npz, a release folder (PCam, NIH, "
    "pneumonia, EyePACS, APTOS), KIND:PATH (pcam:/data/pcam), or an image-folder root.")]
TaskOpt = Annotated[Task | None, typer.Option(
    "--task", help="Override the task of the dataset.")]
RootOpt = Annotated[str | None, typer.Option(
    "--root", help="Folder that manifest paths are relative to (default: the manifest's).")]
ImageSizeOpt = Annotated[int | None, typer.Option(
    help="As given to extract, when --backbone is a spec.")]
DtypeOpt = Annotated[Dtype, typer.Option(help="As given to extract.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    help="As given to extract (the key of a --backbone spec depends on it).")]
FractionsOpt = Annotated[str, _grid("fractions", metavar="F,...")]
SeedsOpt = Annotated[int, _grid("seeds")]
BootstrapOpt = Annotated[int, _grid("n_bootstrap", "--bootstrap")]
DeviceOpt = Annotated[str, _grid("device")]
RecomputeOpt = Annotated[bool, typer.Option(
    help="Recompute runs already persisted in the store.")]
VerifyOpt = Annotated[bool, typer.Option(
    help="Check every shard read against its checksum (a corrupt shard is refused, named).")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
          = False) -> None:
    """featstore: cache frozen embeddings of pretrained backbones and probe them."""
    # --debug is read by main() (it may appear anywhere on the line); declared here for --help.


def print_json(obj) -> None:
    from featstore.report.tables import to_json

    out.print_json(to_json(obj))


def progress_bar():
    from featstore.report.progress import RichProgress

    return RichProgress(err)


def run_lines(what: str, total: int) -> Callable[[list], None]:
    """A probe or fusion grid's progress hook: a line on stderr for each run it computed
    (a run read back says nothing), with its primary scores, the count and the time so far
    (stdout keeps only the results: ``--json`` parses)."""
    import time

    t0, done = time.perf_counter(), [0]

    def on_run(records: list) -> None:
        done[0] += 1
        if not records or all(r.cached for r in records):
            return
        r = records[0]
        scores = ", ".join(f"{getattr(p, 'method', getattr(p, 'probe', ''))} {p.metric} "
                           f"{p.value:.4f}" for p in records if p.primary)
        who = getattr(r, "backbone", "") or " + ".join(getattr(r, "backbones", ()))
        err.print(f"{what} {who} fraction {r.fraction:g} seed {r.seed}: {scores} "
                  f"(run {done[0]} of {total}, {time.perf_counter() - t0:.1f} s)",
                  highlight=False, markup=False)

    return on_run


def within_runs():
    """Progress from inside a long run (a solve's iterations, a head's epochs, a kNN
    search): a line on stderr at most every 10 s, indented under the run lines."""
    from featstore import progress

    return progress.reporting(lambda line: err.print(f"  {line}", highlight=False,
                                                     markup=False))


def print_notes(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[yellow]note:[/] {line}")


def load_data(data: str, root: str | None = None, task: Task | None = None):
    from featstore.data import load_dataset

    return load_dataset(data, root=root, task=task.value if task else None)


def embedding_sets(manifest, store: str, backbones: list[str] | None, image_size: int | None,
          dtype: Dtype, precision: Precision, results_store: str | None = None,
          cache: str | None = None):
    """The resolved sets of ``--backbone`` in ``--store`` (runs that cannot be written there
    go to the results store)."""
    from featstore.extract import resolve_embedding_sets
    from featstore.store import FeatureStore

    fs = FeatureStore(store, results_store=results_store or default_results_store(),
                      cache=cache)
    return resolve_embedding_sets(fs, manifest, backbones, image_size=image_size,
                                  dtype=dtype.value, precision=precision.value)


def print_probe_records(records, as_json: bool, sets=()) -> None:
    """The records as tables (or JSON); ``sets``: the embedding sets whose names they use."""
    from featstore.report.tables import notes, probe_tables, set_names

    if as_json:
        print_json(records)
        return
    for table in probe_tables(records, set_names(sets)):
        out.print(table)
    print_notes(notes(records))


def print_fusion_records(records, as_json: bool, sets=()) -> None:
    """The records as a table (or JSON); ``sets``: the embedding sets whose names they use."""
    from featstore.report.tables import fusion_table, heads_line, notes, set_names

    if as_json:
        print_json(records)
        return
    table = fusion_table(records, set_names(sets))
    if table is not None:
        out.print(table)
    if line := heads_line(records):
        out.print(line)
    print_notes(notes(records))
