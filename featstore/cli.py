"""The ``featstore`` command line (Typer). Results on stdout, progress and errors on stderr.

Each command parses its options, makes one call into its stage's public function (the same
call is the Python API), and prints what :mod:`featstore.report.tables` renders. Heavy
libraries (torch, timm, zarr, scikit-learn) are imported inside the commands, so
``featstore --help`` is instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from featstore import choices
from featstore.errors import FeatstoreError

try:  # recent typer vendors click under typer._click; older typer uses click itself
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="featstore: cache frozen embeddings of pretrained backbones and probe them.",
)
out = Console(soft_wrap=True)
if not out.is_terminal:  # pipes and files get whole tables, not 80-column truncation
    out = Console(soft_wrap=True, width=200)
err = Console(stderr=True, soft_wrap=True)


def _enum(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    return StrEnum(name, {v: v for v in values})


Precision = _enum("Precision", choices.PRECISIONS)
Dtype = _enum("Dtype", choices.DTYPES)
OnError = _enum("OnError", choices.ON_ERROR)
Task = _enum("Task", choices.TASKS)
OrdinalDecode = _enum("OrdinalDecode", choices.ORDINAL_DECODES)


def _split(text: str, option: str, kind: Callable = float) -> list:
    """Comma-separated values of an option (``0.01,0.1,1.0``); the stage checks them."""
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FeatstoreError(f"{option} {text!r}: expected a comma-separated list") from None
    if not values:
        raise FeatstoreError(f"{option} {text!r}: expected at least one value")
    return values


def _choices_metavar(values: tuple[str, ...]) -> str:
    return "[" + "|".join(values) + "],..."


DEFAULT_STORE = "./featstore-data"
StoreOpt = Annotated[str, typer.Option(
    "--store", envvar="FEATSTORE_STORE",
    help="Store root: a folder or an fsspec URL (s3://bucket/prefix).")]
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
FractionsOpt = Annotated[str, typer.Option(
    metavar="F,...",
    help="Comma-separated fractions of train to train on, e.g. 0.01,0.1,1.0.")]
SeedsOpt = Annotated[int, typer.Option(
    help="Seeds per fraction (subsets drawn with seeds 0..N-1).")]
BootstrapOpt = Annotated[int, typer.Option(
    help="Bootstrap resamples of test for the 95% CI (0: none).")]
RecomputeOpt = Annotated[bool, typer.Option(
    help="Recompute runs already persisted in the store.")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
          = False) -> None:
    """featstore: cache frozen embeddings of pretrained backbones and probe them."""
    # --debug is read by main() (it may appear anywhere on the line); declared here for --help.


def _emit_json(obj) -> None:
    from featstore.report.tables import to_json

    out.print_json(to_json(obj))


def _progress():
    from featstore.report.progress import RichProgress

    return RichProgress(err)


def _note(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[yellow]note:[/] {line}")


def _dataset(data: str, root: str | None = None, task: Task | None = None):
    from featstore.data import load_dataset

    return load_dataset(data, root=root, task=task.value if task else None)


def _sets(manifest, store: str, backbones: list[str] | None, image_size: int | None,
          dtype: Dtype, precision: Precision):
    from featstore.extract import resolve_embedding_sets
    from featstore.store import FeatureStore

    return resolve_embedding_sets(FeatureStore(store), manifest, backbones,
                                  image_size=image_size, dtype=dtype.value,
                                  precision=precision.value)


def _print_probes(records, as_json: bool) -> None:
    from featstore.report.tables import notes, probe_tables

    if as_json:
        _emit_json(records)
        return
    for table in probe_tables(records):
        out.print(table)
    _note(notes(records))


def _print_fusion(records, as_json: bool) -> None:
    from featstore.report.tables import fusion_table, heads_line, notes

    if as_json:
        _emit_json(records)
        return
    table = fusion_table(records)
    if table is not None:
        out.print(table)
    if line := heads_line(records):
        out.print(line)
    _note(notes(records))


@app.command()
def extract(
    data: DataOpt,
    backbone: Annotated[list[str], typer.Option(
        "--backbone", "-b", help="NAME[@WEIGHTS], e.g. timm:resnet50@random or "
        "timm:resnet50@/weights/resnet50.pth; repeat for several.")],
    store: StoreOpt = DEFAULT_STORE,
    image_size: Annotated[int | None, typer.Option(
        help="Crop size fed to every backbone (default: each backbone's own).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per forward pass (default: the largest that fits the GPU with a "
             "margin, measured and recorded; 64 on CPU).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="DataLoader workers per process (default: up to 4).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    precision: Annotated[Precision, typer.Option(
        help="Compute precision (autocast; part of the key).")] = Precision.fp32,
    dtype: Annotated[Dtype, typer.Option(help="Stored dtype.")] = Dtype.float32,
    shard_rows: Annotated[int, typer.Option(help="Rows per shard (unit of resume).")] = 1024,
    on_error: Annotated[OnError, typer.Option(
        help="An unreadable image: fail (stop, naming it) or skip (store the row as "
             "missing, list it; probes leave it out).")] = OnError.fail,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="torch.compile each backbone (pays off on long GPU runs).")] = False,
    claim_timeout: Annotated[float | None, typer.Option(
        help="Seconds without a heartbeat before another process takes over a shard "
             "claim (default 120, or $FEATSTORE_CLAIM_TIMEOUT).")] = None,
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed every image of a dataset with each backbone into the store (resumable).

    All backbones share one pass (one decode per image). Under torchrun
    (torchrun --nproc-per-node=N -m featstore extract ...) the ranks split the shards;
    concurrent extracts of the same key share the work.
    """
    from featstore.extract import extract_embeddings
    from featstore.models import parse_backbone
    from featstore.report.tables import extract_lines, notes, skipped_lines
    from featstore.store import FeatureStore

    manifest = _dataset(data, root, task)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    results = extract_embeddings(
        manifest, [parse_backbone(b, input_size=image_size) for b in backbone],
        FeatureStore(store), batch_size=batch_size, num_workers=workers, device=device,
        dtype=dtype.value, precision=precision.value, shard_rows=shard_rows,
        on_error=on_error.value, compile=compile_model, claim_timeout=claim_timeout,
        progress=None if as_json or not rank0 else _progress())
    if not rank0:  # torchrun: rank 0 reports for the job
        return
    if as_json:
        _emit_json(results)
        return
    for line in extract_lines(results):
        out.print(line)
    for line in skipped_lines(results):
        err.print(f"[yellow]{line}[/]")
    _note(notes(results))


@app.command()
def probe(
    data: DataOpt,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", "-b", help="A spec as given to extract (its key is recomputed), an "
        "alias or a key prefix; default: every complete embedding set of the dataset.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    image_size: ImageSizeOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    precision: PrecisionOpt = Precision.fp32,
    probes: Annotated[str, typer.Option(
        "--probe", metavar=_choices_metavar(choices.PROBES),
        help="Probes, comma-separated: linear, knn or linear,knn.")] = "linear",
    fractions: FractionsOpt = "1.0",
    seeds: SeedsOpt = 1,
    l2_grid: Annotated[str | None, typer.Option(
        metavar="L2,...",
        help="Comma-separated L2 values (default: 1e-6..1e4, 11 log steps).")] = None,
    ks: Annotated[str, typer.Option(
        metavar="K,...", help="k values for the kNN probe.")] = "10,20,50,100,200",
    bootstrap: BootstrapOpt = 1000,
    ordinal_decode: Annotated[OrdinalDecode, typer.Option(
        help="Ordinal tasks: argmax, or expected (expected grade, thresholds fitted on "
        "val).")] = OrdinalDecode.argmax,
    recompute: RecomputeOpt = False,
    device: Annotated[str, typer.Option(help="Torch device for the solver.")] = "cpu",
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe cached embeddings over fractions x seeds: chosen on val, scored on test (+CI).

    Every run is persisted in the store; an identical run is read back, not recomputed.
    """
    from featstore.probe import DEFAULT_L2_GRID, ProbeConfig, probe_grid

    manifest = _dataset(data, root, task)
    sets = _sets(manifest, store, backbone, image_size, dtype, precision)
    config = ProbeConfig(task=manifest.task, n_bootstrap=bootstrap,
                         ordinal_decode=ordinal_decode.value,
                         l2_grid=tuple(_split(l2_grid, "--l2-grid")) if l2_grid
                         else DEFAULT_L2_GRID, ks=tuple(_split(ks, "--ks", int)))
    _print_probes(probe_grid(sets, config, probes=_split(probes, "--probe", str),
                             fractions=_split(fractions, "--fractions"), seeds=seeds,
                             recompute=recompute, device=device), as_json)


@app.command()
def results(
    data: DataOpt,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", "-b", help="As for probe; default: every embedding set.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    image_size: ImageSizeOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    precision: PrecisionOpt = Precision.fp32,
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the probe and fusion runs persisted in the store, without recomputing anything."""
    from featstore.fusion import stored_fusion_records
    from featstore.probe import stored_records

    manifest = _dataset(data, root, task)
    sets = _sets(manifest, store, backbone, image_size, dtype, precision)
    probes = stored_records(sets)
    fusions = stored_fusion_records([sets[0].dataset],
                                    keys=[s.key for s in sets] if backbone else None)
    if as_json:
        _emit_json([*probes, *fusions])  # fusion records carry "method" and "backbones"
        return
    if not probes and not fusions:
        err.print("no probe or fusion results stored yet: run 'featstore probe' or "
                  "'featstore fuse'")
        return
    _print_probes(probes, False)
    _print_fusion(fusions, False)


@app.command()
def fuse(
    data: DataOpt,
    backbone: Annotated[list[str], typer.Option(
        "--backbone", "-b", help="Two to eight embedding sets (spec, alias or key prefix).")],
    store: StoreOpt = DEFAULT_STORE,
    image_size: ImageSizeOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    precision: PrecisionOpt = Precision.fp32,
    attention: Annotated[str, typer.Option(
        metavar=_choices_metavar(choices.ATTENTIONS),
        help="DVME variants, comma-separated.")] = "softmax",
    dim: Annotated[int, typer.Option(help="Common projection dimension.")] = 256,
    fractions: FractionsOpt = "1.0",
    seeds: SeedsOpt = 1,
    bootstrap: BootstrapOpt = 1000,
    heads_dir: Annotated[Path, typer.Option(
        help="Where the trained DVME heads are saved.")] = Path("./featstore-heads"),
    baselines: Annotated[bool, typer.Option(
        help="Also report concat and each single backbone.")] = True,
    recompute: RecomputeOpt = False,
    device: Annotated[str, typer.Option(help="Torch device.")] = "cpu",
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the DVME fusion head over several cached embedding sets, beside the baselines.

    Every run is persisted in the store; an identical run is read back, not recomputed.
    """
    from featstore.fusion import fuse_grid

    if not 2 <= len(backbone) <= 8:
        raise FeatstoreError(f"fuse takes 2 to 8 --backbone values, got {len(backbone)}")
    manifest = _dataset(data, root, task)
    sets = _sets(manifest, store, backbone, image_size, dtype, precision)
    _print_fusion(fuse_grid(sets, task=manifest.task, fractions=_split(fractions, "--fractions"),
                            seeds=seeds,
                            attentions=_split(attention, "--attention", str),
                            dim=dim, n_bootstrap=bootstrap,
                            baselines=baselines, heads_dir=heads_dir, recompute=recompute,
                            device=device), as_json)


@app.command()
def models(
    download: Annotated[str | None, typer.Option(
        help="Download this spec's weights (needs network) into the first weights folder.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """List the registered backbone specs and whether their weights are on this machine."""
    from featstore.models import download_weights, parse_backbone, spec_rows
    from featstore.models.weights import WEIGHTS_DIR_ENV, weights_dirs
    from featstore.report.tables import models_table

    if download:
        path = download_weights(parse_backbone(download))
        out.print(f"{download}: weights written to {path}")
        return
    rows = spec_rows()
    if as_json:
        _emit_json(rows)
        return
    out.print(models_table(rows))
    dirs = ", ".join(str(d) for d in weights_dirs())
    out.print(f"weights are searched in: @path on the command line, then {dirs} "
              f"(set ${WEIGHTS_DIR_ENV} to add a shared folder first)")


manifest_app = typer.Typer(no_args_is_help=True,
                           help="Build canonical manifests from raw release layouts; validate.")
app.add_typer(manifest_app, name="manifest")


@manifest_app.command("build")
def manifest_build(
    kind: Annotated[str, typer.Argument(
        help="pcam, nih, pneumonia, eyepacs, aptos, image-folder or medmnist.")],
    root: Annotated[Path, typer.Argument(help="The release folder (or .npz file).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest CSV to write.")],
    val_fraction: Annotated[float | None, typer.Option(
        help="pneumonia: move this share of the train patients into val (the release's "
             "val has 16 images).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --val-fraction.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Turn a raw release layout into a canonical manifest CSV."""
    from featstore.data.readers import build_release_manifest

    m, spec = build_release_manifest(kind, root, output, val_fraction=val_fraction, seed=seed)
    if not as_json:
        err.print(f"{spec['title']} — {spec['source']} (licence: {spec['licence']}; "
                  f"metric: {spec['metric']}; splits: {spec['splits']})")
    _manifest_summary(m, as_json, written=str(output),
                      spec={k: spec[k] for k in ("source", "licence", "metric", "splits")})


@manifest_app.command("validate")
def manifest_validate(
    file: Annotated[Path, typer.Argument(help="A manifest CSV/Parquet (or any --data value).")],
    check_files: Annotated[bool, typer.Option(
        help="Also open and decode every image: finds missing, unreadable and truncated "
             "files (reads all pixels, so minutes for a large release).")] = False,
    workers: Annotated[int, typer.Option(
        help="Decoding processes for --check-files.")] = 0,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a manifest: columns, ids, splits, labels, groups (and files)."""
    m = _dataset(str(file), task=task)
    if check_files:
        m.check_files(decode=True, workers=workers)
    _manifest_summary(m, as_json)


def _manifest_summary(m, as_json: bool, written: str | None = None,
                      spec: dict | None = None) -> None:
    summary = {**m.summary(), "written": written, "spec": spec}
    if as_json:
        _emit_json(summary)
        return
    from featstore.report.tables import manifest_line

    _note(list(m.notes))
    out.print(manifest_line(summary))


@app.command(name="ls")
def ls_(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """List datasets and embedding sets in the store."""
    from featstore.report.tables import store_table
    from featstore.store import FeatureStore
    from featstore.store.listing import list_sets

    rows = list_sets(FeatureStore(store))
    if as_json:
        _emit_json(rows)
    elif not rows:
        err.print(f"store {store}: no embeddings yet")
    else:
        out.print(store_table(rows, store))


@app.command()
def info(
    target: Annotated[str, typer.Argument(help="Embedding key prefix or backbone alias.")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Show the provenance of one embedding set (searched across all datasets)."""
    from featstore.report.tables import info_tables
    from featstore.store import FeatureStore
    from featstore.store.listing import find_sets

    records = find_sets(FeatureStore(store), target)
    if as_json:
        _emit_json(records)
        return
    for table in info_tables(records):
        out.print(table)


@app.command()
def verify(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """Recompute every done shard's checksum; exit 1 if any shard is corrupt."""
    from featstore.report.tables import verify_lines
    from featstore.store import FeatureStore
    from featstore.store.listing import verify_store

    rows = verify_store(FeatureStore(store))
    if as_json:
        _emit_json(rows)
    else:
        for line in verify_lines(rows):
            out.print(line)
    if any(r["corrupt_shards"] for r in rows):
        raise typer.Exit(1)


@app.command()
def demo(
    store: StoreOpt = DEFAULT_STORE,
    workdir: Annotated[Path, typer.Option(help="Where the demo images are written.")]
    = Path("./featstore-demo"),
    as_json: JsonOpt = False,
) -> None:
    """Generate a small image dataset, extract two small backbones, probe, print the table."""
    import time

    from featstore.demo import DEMO_BACKBONES, run_demo

    t0 = time.perf_counter()
    err.print("[yellow]featstore demo:[/] offline, so the two backbones "
              f"({', '.join(DEMO_BACKBONES)}) have [bold]random weights[/]; the probe learns "
              "from what random convolutions and attention still see.")
    results, records = run_demo(store, workdir, progress=None if as_json else _progress())
    if as_json:
        _emit_json({"extract": results, "probe": records})
        return
    for r in results:
        out.print(f"extract {r.alias}: {r.status}, {r.rows} x {r.dim}")
    _print_probes(records, False)
    out.print(f"demo finished in {time.perf_counter() - t0:.1f}s; store: {store} "
              f"(try: featstore ls --store {store})")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line on error, the traceback only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("FEATSTORE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="featstore", standalone_mode=False)
    except NoArgsIsHelpError:  # the help is already printed
        sys.exit(0)
    except UsageError as e:  # a bad option value or a missing option: one line too
        where = f"featstore {e.ctx.info_name} --help" if e.ctx and e.ctx.parent else (
            "featstore --help")
        err.print(f"[red]error:[/] {e.format_message()} (see '{where}')", highlight=False)
        sys.exit(1)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except FeatstoreError as e:
        if debug:
            raise
        err.print(f"[red]error:[/] {e}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted: finished shards are kept; re-run the same command to resume")
        sys.exit(130)
    except Exception as e:  # a bug: still one line, unless --debug
        if debug:
            raise
        err.print(f"[red]error:[/] internal {e.__class__.__name__}: {e} "
                  "(re-run with --debug for the traceback)", highlight=False)
        sys.exit(1)
    sys.exit(code or 0)
