"""The ``featstore`` command line (Typer). Results on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from featstore.errors import FeatstoreError, NotExtractedError

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

DEFAULT_STORE = "./featstore-data"
StoreOpt = Annotated[str, typer.Option(
    "--store", envvar="FEATSTORE_STORE",
    help="Store root: a folder or an fsspec URL (s3://bucket/prefix).")]
PrecisionOpt = Annotated[str, typer.Option(
    help="As given to extract (the key of a --backbone spec depends on it).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DataOpt = Annotated[str, typer.Option(
    "--data", help="A manifest .csv/.parquet, a MedMNIST .npz, a release folder (PCam, NIH, "
    "pneumonia, EyePACS, APTOS), KIND:PATH (pcam:/data/pcam), or an image-folder root.")]
TaskOpt = Annotated[str | None, typer.Option(
    "--task", help="Override the task: binary, multiclass, ordinal or multilabel.")]
RootOpt = Annotated[str | None, typer.Option(
    "--root", help="Folder that manifest paths are relative to (default: the manifest's).")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
          = False) -> None:
    """featstore: cache frozen embeddings of pretrained backbones and probe them."""
    # --debug is read by main() (it may appear anywhere on the line); declared here for --help.


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "- img/s", style="cyan")


class RichProgress:
    """The engine's progress hook drawn as a rich bar on stderr."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None

    def start(self, alias: str, total_rows: int) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), _RateColumn(), TimeElapsedColumn(),
                                  console=err, transient=False)
        self._progress.start()
        self._task = self._progress.add_task(alias, total=total_rows)

    def advance(self, rows: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, rows)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _emit_json(obj) -> None:
    out.print_json(json.dumps(obj, default=str))


def _random_note(random_weights: bool) -> None:
    if random_weights:
        err.print("[yellow]note:[/] backbones marked [bold]random[/] have untrained weights: "
                  "their numbers test the pipeline, not transfer from pretraining.")


def _specs(backbones: list[str], image_size: int | None):
    from featstore.models import parse_backbone

    return [parse_backbone(b, input_size=image_size) for b in backbones]


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
    precision: Annotated[str, typer.Option(
        help="Compute precision: fp32, bf16 or fp16 (autocast; part of the key).")] = "fp32",
    dtype: Annotated[str, typer.Option(help="Stored dtype: float32 or float16.")] = "float32",
    shard_rows: Annotated[int, typer.Option(help="Rows per shard (unit of resume).")] = 1024,
    on_error: Annotated[str, typer.Option(
        help="An unreadable image: fail (stop, naming it) or skip (store the row as "
             "missing, list it; probes leave it out).")] = "fail",
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
    from featstore.data import load_dataset
    from featstore.extract import extract_embeddings as run_extract
    from featstore.store import FeatureStore

    if dtype not in ("float32", "float16"):
        raise FeatstoreError(f"--dtype {dtype!r}: expected float32 or float16")
    manifest = load_dataset(data, root=root, task=task)
    specs = _specs(backbone, image_size)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    results = run_extract(manifest, specs, FeatureStore(store), batch_size=batch_size,
                          num_workers=workers, device=device, dtype=dtype, precision=precision,
                          shard_rows=shard_rows, on_error=on_error, compile=compile_model,
                          claim_timeout=claim_timeout,
                          progress=None if as_json or not rank0 else RichProgress())
    if not rank0:  # torchrun: rank 0 reports for the job
        return
    if as_json:
        _emit_json([r.to_dict() for r in results])
        return
    for r in results:
        what = {"cached": "cache hit, nothing to do",
                "resumed": f"resumed: {r.shards_written}/{r.shards_total} shards written",
                "extracted": f"{r.shards_written} shards written"}[r.status]
        if r.shards_by_others:
            what += f", {r.shards_by_others} by other processes"
        rate = f", {r.images_per_s:,.0f} img/s" if r.shards_written else ""
        out.print(f"{r.alias}: {r.rows} x {r.dim} -> {r.dataset}/{r.key[:20]} "
                  f"({what}, {r.seconds:.1f}s{rate})")
        if r.skipped:
            shown = ", ".join(r.skipped[:5]) + (" ..." if len(r.skipped) > 5 else "")
            err.print(f"[yellow]skipped {len(r.skipped)} unreadable images[/] (stored as "
                      f"missing; probes leave them out): {shown}")
    _random_note(any(r.random_weights for r in results))


def _parse_list(text: str, option: str, kind=float) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FeatstoreError(f"{option} {text!r}: expected a comma-separated list") from None
    if not values:
        raise FeatstoreError(f"{option} {text!r}: expected at least one value")
    return values


@app.command()
def probe(
    data: DataOpt,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", "-b", help="A spec as given to extract (its key is recomputed), an "
        "alias or a key prefix; default: every complete embedding set of the dataset.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    image_size: Annotated[int | None, typer.Option(
        help="As given to extract, when --backbone is a spec.")] = None,
    dtype: Annotated[str, typer.Option(help="As given to extract.")] = "float32",
    precision: PrecisionOpt = "fp32",
    probes: Annotated[str, typer.Option(
        "--probe", help="linear, knn, or both: linear,knn.")] = "linear",
    fractions: Annotated[str, typer.Option(
        help="Comma-separated fractions of train to probe with, e.g. 0.01,0.1,1.0.")] = "1.0",
    seeds: Annotated[int, typer.Option(
        help="Seeds per fraction (subsets drawn with seeds 0..N-1).")] = 1,
    l2_grid: Annotated[str | None, typer.Option(
        help="Comma-separated L2 values (default: 1e-6..1e4, 11 log steps).")] = None,
    ks: Annotated[str, typer.Option(help="k values for the kNN probe.")] = "10,20,50,100,200",
    bootstrap: Annotated[int, typer.Option(
        help="Bootstrap resamples of test for the 95% CI (0: none).")] = 1000,
    ordinal_decode: Annotated[str, typer.Option(
        help="Ordinal tasks: argmax, or expected (expected grade, thresholds fitted on "
        "val).")] = "argmax",
    recompute: Annotated[bool, typer.Option(
        help="Recompute runs already persisted in the store.")] = False,
    device: Annotated[str, typer.Option(help="Torch device for the solver.")] = "cpu",
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe cached embeddings over fractions x seeds: chosen on val, scored on test (+CI).

    Every run is persisted in the store; an identical run is read back, not recomputed.
    """
    from featstore.data import load_dataset
    from featstore.probe import DEFAULT_L2_GRID, ProbeConfig, probe_embeddings

    fracs = _parse_list(fractions, "--fractions")
    if seeds < 1:
        raise FeatstoreError(f"--seeds {seeds}: expected at least 1")
    kinds = _parse_list(probes, "--probe", str)
    manifest = load_dataset(data, root=root, task=task)
    sets = _embedding_sets(manifest, store, backbone, image_size, dtype, precision)
    base = ProbeConfig(task=manifest.task, n_bootstrap=bootstrap, ordinal_decode=ordinal_decode,
                       l2_grid=tuple(_parse_list(l2_grid, "--l2-grid")) if l2_grid
                       else DEFAULT_L2_GRID, ks=tuple(_parse_list(ks, "--ks", int)))
    records = []
    for es in sets:
        emb = es.load()
        for kind in kinds:
            for fraction in fracs:
                for seed in range(seeds):
                    records.extend(probe_embeddings(
                        emb, base, probe=kind.strip(), fraction=fraction, seed=seed,
                        store_set=es, recompute=recompute, device=device))
    _print_results(records, as_json)


@app.command()
def results(
    data: DataOpt,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", "-b", help="As for probe; default: every embedding set.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    image_size: Annotated[int | None, typer.Option(help="As given to extract.")] = None,
    dtype: Annotated[str, typer.Option(help="As given to extract.")] = "float32",
    precision: PrecisionOpt = "fp32",
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the probe results persisted in the store, without recomputing anything."""
    from featstore.data import load_dataset
    from featstore.probe import stored_records

    manifest = load_dataset(data, root=root, task=task)
    records = stored_records(_embedding_sets(manifest, store, backbone, image_size, dtype,
                                             precision))
    if not records and not as_json:
        err.print("no probe results stored yet: run 'featstore probe'")
        return
    _print_results(records, as_json)


@app.command()
def fuse(
    data: DataOpt,
    backbone: Annotated[list[str], typer.Option(
        "--backbone", "-b", help="Two to eight embedding sets (spec, alias or key prefix).")],
    store: StoreOpt = DEFAULT_STORE,
    image_size: Annotated[int | None, typer.Option(help="As given to extract.")] = None,
    dtype: Annotated[str, typer.Option(help="As given to extract.")] = "float32",
    precision: PrecisionOpt = "fp32",
    attention: Annotated[str, typer.Option(
        help="DVME variants: softmax, sigmoid, uniform (comma-separated).")] = "softmax",
    dim: Annotated[int, typer.Option(help="Common projection dimension.")] = 256,
    fractions: Annotated[str, typer.Option(help="Fractions of train, e.g. 0.1,1.0.")] = "1.0",
    seeds: Annotated[int, typer.Option(help="Seeds per fraction.")] = 1,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CI.")] = 1000,
    heads_dir: Annotated[Path, typer.Option(
        help="Where the trained DVME heads are saved.")] = Path("./featstore-heads"),
    baselines: Annotated[bool, typer.Option(
        help="Also report concat and each single backbone.")] = True,
    device: Annotated[str, typer.Option(help="Torch device.")] = "cpu",
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the DVME fusion head over several cached embedding sets, beside the baselines."""
    from featstore.data import load_dataset
    from featstore.fusion import fuse_embeddings

    if not 2 <= len(backbone) <= 8:
        raise FeatstoreError(f"fuse takes 2 to 8 --backbone values, got {len(backbone)}")
    manifest = load_dataset(data, root=root, task=task)
    sets = _embedding_sets(manifest, store, backbone, image_size, dtype, precision)
    embs = [es.load() for es in sets]
    kinds = _parse_list(attention, "--attention", str)
    records = []
    for fraction in _parse_list(fractions, "--fractions"):
        for seed in range(seeds):
            records += fuse_embeddings(embs, task=manifest.task, fraction=fraction, seed=seed,
                                       attentions=kinds, dim=dim, n_bootstrap=bootstrap,
                                       baselines=baselines, heads_dir=heads_dir,
                                       device=device)
    ds = sets[0].dataset
    by_run: dict[str, list] = {}
    for r in records:
        by_run.setdefault(r.run_id, []).append(r.to_dict())
    for run_id, recs in by_run.items():
        ds.save_fusion_run(run_id, {"records": recs})
    if as_json:
        _emit_json([r.to_dict() for r in records])
        return
    _print_fusion_table(records)
    _random_note(any(s.attrs.get("provenance", {}).get("random_weights") for s in sets))
    _excluded_note(records)


def _print_fusion_table(records) -> None:
    first = records[0]
    table = Table(title=f"fusion on test ({first.dataset}, task {first.task}; mean +- sd "
                        "over seeds, bootstrap 95% CI, mean DVME attention on test)")
    from featstore.probe import PRIMARY_METRIC

    for col in ("method", "fraction", "n_train", PRIMARY_METRIC[first.task], "95% CI",
                "attention", "seeds"):
        table.add_column(col)
    cells: dict[tuple, list] = {}
    for r in records:
        if r.primary:
            cells.setdefault((r.method, r.fraction), []).append(r)
    for (method, fraction), rs in cells.items():
        lo = np.nanmean([r.ci_low for r in rs])
        hi = np.nanmean([r.ci_high for r in rs])
        att = ""
        if rs[0].attention:
            mean = {k: np.mean([r.attention[k] for r in rs]) for k in rs[0].attention}
            att = "  ".join(f"{k}: {v:.2f}" for k, v in mean.items())
        table.add_row(method, f"{fraction:g}", str(rs[0].n_train),
                      _fmt([r.value for r in rs]),
                      "-" if np.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]", att, str(len(rs)))
    out.print(table)
    heads = sorted({r.head_path for r in records if r.head_path})
    if heads:
        out.print(f"DVME heads saved: {', '.join(heads)} (featstore.fusion.DVME.load)")


def _embedding_sets(manifest, store: str, backbone, image_size, dtype, precision):
    from featstore.store import FeatureStore

    ds = FeatureStore(store).dataset(manifest)
    sets = [_find_set(ds, b, image_size, dtype, precision) for b in backbone] if backbone else [
        s for s in ds.embedding_sets() if s.complete]
    if not sets:
        raise NotExtractedError(f"dataset {ds.name}: no complete embedding sets in {store}; "
                                "run 'featstore extract' first")
    return sets


def _print_results(records, as_json: bool) -> None:
    if as_json:
        _emit_json([r.to_dict() for r in records])
        return
    if records:
        _print_probe_table(records)
        _random_note(any(r.random_weights for r in records))
        _excluded_note(records)


def _excluded_note(records) -> None:
    """Say when rows were left out because their images were skipped at extraction."""
    by_set = {getattr(r, "backbone", None) or "+".join(r.backbones): r.n_excluded
              for r in records if r.n_excluded}
    for name, n in by_set.items():
        err.print(f"[yellow]note:[/] {name}: {n} rows left out (images skipped at "
                  "extraction, no embedding)")


def _find_set(ds, text: str, image_size: int | None, dtype: str, precision: str):
    """An embedding set by spec (key recomputed from the weights), alias or key prefix.

    A spec (``timm:...``, a registered name, anything with ``@``) is resolved to its key from
    the weights on disk, so changed weights never silently match older embeddings.
    """
    from featstore.errors import BackboneError
    from featstore.extract import resolve_key
    from featstore.models import parse_backbone

    try:
        spec = parse_backbone(text, input_size=image_size)
    except BackboneError:
        if "@" in text or text.startswith("timm:"):
            raise
        return ds.embedding_set(text)
    return ds.embedding_set(resolve_key(spec, dtype, precision)[1].digest)


def _fmt(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if np.isnan(v).all():
        return "undefined"
    if len(v) == 1:
        return f"{v[0]:.4f}"
    return f"{np.nanmean(v):.4f} +- {np.nanstd(v, ddof=1):.4f}"


def _print_probe_table(records) -> None:
    """Backbone x probe x fraction: each metric (mean +- sd over seeds), the primary
    metric's bootstrap 95% CI on test, the chosen hyperparameter."""
    first = records[0]
    metrics = list(dict.fromkeys(r.metric for r in records if not r.metric.startswith("auc[")))
    short = {"balanced_accuracy": "bal_acc", "accuracy": "acc"}
    table = Table(title=f"probes on test ({first.dataset}, task {first.task}; "
                        "mean +- sd over seeds, bootstrap 95% CI of the primary metric)")
    for col in ("backbone", "probe", "fraction", "n_train", *[short.get(m, m) for m in metrics],
                "95% CI", "chosen", "seeds"):
        table.add_column(col, justify="left" if col in ("backbone", "probe", "chosen")
                         else "right")
    cells: dict[tuple, list] = {}
    for r in records:
        cells.setdefault((r.backbone, r.key, r.probe, r.fraction), []).append(r)
    for (backbone, _, kind, fraction), rs in cells.items():
        by_metric: dict[str, list[float]] = {}
        for r in rs:
            by_metric.setdefault(r.metric, []).append(r.value)
        prim = [r for r in rs if r.primary]
        lo, hi = np.nanmean([r.ci_low for r in prim]), np.nanmean([r.ci_high for r in prim])
        ci = "-" if np.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
        chosen = ", ".join(dict.fromkeys(r.hyperparameter for r in prim))
        table.add_row(backbone, kind, f"{fraction:g}",
                      "/".join(sorted({str(r.n_train) for r in prim})),
                      *[_fmt(by_metric.get(m, [])) for m in metrics], ci, chosen,
                      str(len(prim)))
    out.print(table)
    per_label = [r for r in records if r.metric.startswith("auc[")]
    if per_label:
        lt = Table(title="per-label AUC (mean +- sd over seeds)")
        for col in ("backbone", "probe", "fraction", "label", "auc"):
            lt.add_column(col)
        cells = {}
        for r in per_label:
            cells.setdefault((r.backbone, r.probe, r.fraction, r.metric[4:-1]), []).append(
                r.value)
        for (backbone, kind, fraction, label), values in cells.items():
            lt.add_row(backbone, kind, f"{fraction:g}", label, _fmt(values))
        out.print(lt)


@app.command()
def models(
    download: Annotated[str | None, typer.Option(
        help="Download this spec's weights (needs network) into the first weights folder.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """List the registered backbone specs and whether their weights are on this machine."""
    from featstore.models import download_weights, find_weights, list_specs, parse_backbone
    from featstore.models.weights import WEIGHTS_DIR_ENV, weights_dirs, where_to_put

    if download:
        path = download_weights(parse_backbone(download))
        out.print(f"{download}: weights written to {path}")
        return
    rows = []
    for spec in list_specs():
        found = find_weights(spec)
        rows.append({"name": spec.name, "architecture": spec.architecture, "dim": spec.dim,
                     "layer": spec.layer, "source": spec.source,
                     "weights_file": spec.weights_file,
                     "present": str(found) if found else None,
                     "where": where_to_put(spec), "url": spec.url})
    if as_json:
        _emit_json(rows)
        return
    table = Table(title="backbone specs (any timm model also works: timm:<name>[.<tag>])")
    for col in ("name", "architecture", "dim", "source", "weights"):
        table.add_column(col)
    for r in rows:
        have = f"[green]present[/] {r['present']}" if r["present"] else (
            f"[red]missing[/]: put {r['weights_file']} in {r['where']}")
        table.add_row(r["name"], r["architecture"], str(r["dim"]), r["source"], have)
    out.print(table)
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
    from featstore.data.readers import BUILDERS, read_pneumonia, write_manifest_csv

    if kind not in BUILDERS:
        raise FeatstoreError(f"unknown manifest kind {kind!r} (expected one of "
                             f"{', '.join(BUILDERS)})")
    if not root.exists():
        raise FeatstoreError(f"{root}: no such file or folder")
    if val_fraction is not None and kind != "pneumonia":
        raise FeatstoreError(f"--val-fraction applies to pneumonia only; {kind} has its own "
                             "split rule (see data_manifests/)")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise FeatstoreError(f"--val-fraction {val_fraction}: expected a share in (0, 1)")
    from featstore.data.specs import load_spec

    spec = load_spec(kind)
    if val_fraction is not None:
        m = read_pneumonia(root, val_fraction=val_fraction, seed=seed)
    else:
        m = BUILDERS[kind](root)
    write_manifest_csv(m, output)
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
    from featstore.data import load_dataset

    m = load_dataset(file, task=task)
    if check_files:
        m.check_files(decode=True, workers=workers)
    _manifest_summary(m, as_json)


def _manifest_summary(m, as_json: bool, written: str | None = None,
                      spec: dict | None = None) -> None:
    summary = {"name": m.name, "rows": len(m), "task": m.task, "num_classes": m.num_classes,
               "splits": {s: int((m.split == s).sum()) for s in ("train", "val", "test")},
               "labels": list(m.label_names), "groups": m.group is not None,
               "sha256": m.sha256, "written": written, "spec": spec,
               "notes": list(m.notes)}
    if as_json:
        _emit_json(summary)
        return
    for note in m.notes:
        err.print(f"[yellow]note:[/] {note}")
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    out.print(f"{m.name}: {len(m)} rows ({splits}), task {m.task}, manifest {m.sha256[:12]}"
              + (f" -> {written}" if written else ": valid"))


@app.command(name="ls")
def ls_(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """List datasets and embedding sets in the store."""
    from featstore.store import FeatureStore

    rows = []
    for ds in FeatureStore(store).datasets():
        for es in ds.embedding_sets():
            done = int(es.done_mask().sum())
            rows.append({
                "dataset": ds.name, "backbone": es.alias, "key": es.key,
                "rows": es.rows, "dim": es.dim, "dtype": es.dtype,
                "shards_done": done, "shards": es.n_shards,
                "status": "complete" if done == es.n_shards else "incomplete",
                "missing": int(es.missing_mask().sum()),
                "random_weights": bool(es.attrs.get("provenance", {}).get("random_weights")),
            })
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        err.print(f"store {store}: no embeddings yet")
        return
    table = Table(title=f"featstore {store}")
    for col in ("dataset", "backbone", "key", "rows x dim", "shards", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["dataset"], r["backbone"], r["key"][:20], f"{r['rows']} x {r['dim']}",
                      f"{r['shards_done']}/{r['shards']}",
                      r["status"] + (f", {r['missing']} missing" if r["missing"] else ""))
    out.print(table)


@app.command()
def info(
    target: Annotated[str, typer.Argument(help="Embedding key prefix or backbone alias.")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Show the provenance of one embedding set (searched across all datasets)."""
    from featstore.store import FeatureStore

    hits = []
    for ds in FeatureStore(store).datasets():
        hits += [es for es in ds.embedding_sets()
                 if es.key.startswith(target) or es.alias == target]
    if not hits:
        raise NotExtractedError(f"store {store}: no embedding set matches {target!r}")
    records = [{"dataset": es.dataset.name, "shards_done": int(es.done_mask().sum()),
                **es.attrs} for es in hits]
    if as_json:
        _emit_json(records)
        return
    for rec in records:
        table = Table(title=f"{rec['dataset']} / {rec['alias']}", show_header=False)
        table.add_column("field")
        table.add_column("value")
        for k, v in rec.items():
            table.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
        out.print(table)


@app.command()
def verify(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """Recompute every done shard's checksum; exit 1 if any shard is corrupt."""
    from featstore.store import FeatureStore

    rows = []
    for ds in FeatureStore(store).datasets():
        for es in ds.embedding_sets():
            bad = es.verify()
            rows.append({"dataset": ds.name, "backbone": es.alias, "key": es.key,
                         "shards_checked": int(es.done_mask().sum()), "corrupt_shards": bad})
    if as_json:
        _emit_json(rows)
    else:
        for r in rows:
            state = "ok" if not r["corrupt_shards"] else f"CORRUPT shards {r['corrupt_shards']}"
            out.print(f"{r['dataset']}/{r['key'][:20]} {r['backbone']}: "
                      f"{r['shards_checked']} shards {state}")
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
    from featstore.data import load_dataset
    from featstore.demo import DEMO_BACKBONES, DEMO_INPUT_SIZE, write_demo_dataset
    from featstore.extract import extract_embeddings as run_extract
    from featstore.probe import probe_embeddings
    from featstore.store import FeatureStore

    t0 = time.perf_counter()
    err.print("[yellow]featstore demo:[/] offline, so the two backbones "
              f"({', '.join(DEMO_BACKBONES)}) have [bold]random weights[/]; the probe learns "
              "from what random convolutions and attention still see.")
    manifest_path = write_demo_dataset(workdir)
    manifest = load_dataset(manifest_path)
    err.print(f"wrote {len(manifest)} demo images and {manifest_path}")
    fs = FeatureStore(store)
    results = run_extract(manifest, _specs(list(DEMO_BACKBONES), DEMO_INPUT_SIZE), fs,
                          batch_size=64, progress=None if as_json else RichProgress())
    records = []
    for r in results:
        emb = fs.dataset(manifest).embedding_set(r.key).load()
        records.extend(probe_embeddings(emb, task=manifest.task))
    if as_json:
        _emit_json({"extract": [r.to_dict() for r in results],
                    "probe": [r.to_dict() for r in records]})
        return
    for r in results:
        out.print(f"extract {r.alias}: {r.status}, {r.rows} x {r.dim}")
    _print_probe_table(records)
    out.print(f"demo finished in {time.perf_counter() - t0:.1f}s; store: {store} "
              f"(try: featstore ls --store {store})")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line on error, the traceback only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("FEATSTORE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="featstore")
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
