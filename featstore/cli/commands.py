"""The verbs: each parses its options, makes one call into its stage's public function (the
same call is the Python API), and prints what :mod:`featstore.report.tables` renders."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from featstore import options
from featstore.cli._shared import (
    DEFAULT_FRACTIONS,
    DEFAULT_GRID,
    DEFAULT_STORE,
    BootstrapOpt,
    CacheOpt,
    DataOpt,
    Decode,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    FractionsOpt,
    ImageSizeOpt,
    JsonOpt,
    OnError,
    OrdinalDecode,
    Precision,
    PrecisionOpt,
    RecomputeOpt,
    Resize,
    ResultsStoreOpt,
    RootOpt,
    SeedsOpt,
    StoreOpt,
    TaskOpt,
    VerifyOpt,
    app,
    checked,
    choices,
    choices_metavar,
    config_option,
    default_results_store,
    embedding_sets,
    err,
    grid_settings,
    load_data,
    out,
    output_path,
    print_fusion_records,
    print_json,
    print_notes,
    print_probe_records,
    progress_bar,
    run_lines,
    split_option,
    within_runs,
)
from featstore.extract.config import ExtractConfig
from featstore.fusion.config import FuseConfig
from featstore.grid import ProbeGrid
from featstore.probe.config import ProbeConfig


def _x(name: str, *decls: str, **kw) -> typer.models.OptionInfo:
    """``featstore extract``'s option for the :class:`ExtractConfig` field ``name``."""
    return config_option(ExtractConfig, name, *decls, **kw)


def _xd(name: str):
    return options.default(ExtractConfig, name)


_PRECISION, _DTYPE = Precision(_xd("precision")), Dtype(_xd("dtype"))
_ON_ERROR, _RESIZE = OnError(_xd("on_error")), Resize(_xd("resize"))
_DECODE = Decode(_xd("decode"))


@app.command()
def extract(
    data: DataOpt,
    backbone: Annotated[list[str], typer.Option(
        "--backbone", "-b", help="NAME[@WEIGHTS], e.g. timm:resnet50@random or "
        "timm:resnet50@/weights/resnet50.pth; repeat for several.")],
    store: StoreOpt = DEFAULT_STORE,
    image_size: Annotated[int | None, typer.Option(
        help="Crop size fed to every backbone (default: each backbone's own).")] = None,
    batch_size: Annotated[int | None, _x("batch_size")] = _xd("batch_size"),
    workers: Annotated[int | None, _x("workers")] = _xd("workers"),
    device: Annotated[str, _x("device")] = _xd("device"),
    precision: Annotated[Precision, _x("precision", metavar=None)] = _PRECISION,
    dtype: Annotated[Dtype, _x("dtype", metavar=None)] = _DTYPE,
    shard_rows: Annotated[int, _x("shard_rows")] = _xd("shard_rows"),
    on_error: Annotated[OnError, _x("on_error", metavar=None)] = _ON_ERROR,
    compile_model: Annotated[bool, _x("compile", "--compile")] = _xd("compile"),
    claim_timeout: Annotated[float | None, _x("claim_timeout")] = _xd("claim_timeout"),
    max_pixels: Annotated[int, _x("max_pixels")] = _xd("max_pixels"),
    resize: Annotated[Resize, _x("resize", metavar=None)] = _RESIZE,
    decode: Annotated[Decode, _x("decode", metavar=None)] = _DECODE,
    verify: Annotated[bool, _x("verify", "--verify")] = _xd("verify"),
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
    from featstore.models.registry import backbone_spec
    from featstore.report.tables import extract_lines, notes, skipped_lines
    from featstore.store import FeatureStore

    config = checked(ExtractConfig(
        batch_size=batch_size, workers=workers, device=device, precision=precision.value,
        dtype=dtype.value, shard_rows=shard_rows, on_error=on_error.value,
        compile=compile_model, claim_timeout=claim_timeout, max_pixels=max_pixels,
        resize=resize.value, decode=decode.value, verify=verify))
    manifest = load_data(data, root, task)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    fs = FeatureStore(store)
    results = extract_embeddings(
        manifest, [backbone_spec(fs, b, input_size=image_size) for b in backbone],
        fs, **config.kwargs(), progress=None if as_json or not rank0 else progress_bar())
    if not rank0:  # torchrun: rank 0 reports for the job
        return
    if as_json:
        print_json(results)
        return
    for line in extract_lines(results):
        out.print(line)
    for line in skipped_lines(results):
        err.print(f"[yellow]{escape(line)}[/]")
    print_notes(notes(results))


def _p(name: str, *decls: str, **kw) -> typer.models.OptionInfo:
    """``featstore probe``'s option for the :class:`ProbeConfig` field ``name``."""
    return config_option(ProbeConfig, name, *decls, **kw)


_KS = ",".join(map(str, options.default(ProbeConfig, "ks")))
_ORDINAL_DECODE = OrdinalDecode(options.default(ProbeConfig, "ordinal_decode"))


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
    probes: Annotated[str, config_option(ProbeGrid, "probes", "--probe",
                                         metavar=choices_metavar(choices.PROBES))]
    = ",".join(options.default(ProbeGrid, "probes")),
    fractions: FractionsOpt = DEFAULT_FRACTIONS,
    seeds: SeedsOpt = DEFAULT_GRID.seeds,
    l2_grid: Annotated[str | None, _p("l2_grid", metavar="L2,...")] = None,
    ks: Annotated[str, _p("ks", metavar="K,...")] = _KS,
    bootstrap: BootstrapOpt = DEFAULT_GRID.n_bootstrap,
    ordinal_decode: Annotated[OrdinalDecode, _p("ordinal_decode", metavar=None)]
    = _ORDINAL_DECODE,
    recompute: RecomputeOpt = False,
    verify: VerifyOpt = True,
    device: DeviceOpt = DEFAULT_GRID.device,
    results_store: ResultsStoreOpt = None,
    cache: CacheOpt = None,
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe cached embeddings over fractions x seeds: chosen on val, scored on test (+CI).

    Every run is persisted in the store; an identical run is read back, not recomputed.
    """
    from featstore.probe import probe_grid

    grid = grid_settings(fractions, seeds, bootstrap, device, ProbeGrid,
                         probes=split_option(probes, "--probe", str))
    config = checked(ProbeConfig(n_bootstrap=bootstrap, ordinal_decode=ordinal_decode.value,
                                 l2_grid=split_option(l2_grid, "--l2-grid") if l2_grid
                                 else options.default(ProbeConfig, "l2_grid"),
                                 ks=split_option(ks, "--ks", int)))
    manifest = load_data(data, root, task)
    sets = embedding_sets(manifest, store, backbone, image_size, dtype, precision,
                          results_store, cache)
    with within_runs():
        records = probe_grid(sets, replace(config, task=manifest.task), probes=grid.probes,
                             fractions=grid.fractions, seeds=seeds, recompute=recompute,
                             device=device, verify=verify,
                             on_run=run_lines("probe", len(sets) * len(grid.probes)
                                              * len(grid.fractions) * len(grid.seed_list())))
    print_probe_records(records, as_json, sets)
    print_notes(sets[0].dataset.store.notes)


@app.command()
def results(
    data: DataOpt,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", "-b", help="As for probe; default: every embedding set.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    image_size: ImageSizeOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    precision: PrecisionOpt = Precision.fp32,
    results_store: ResultsStoreOpt = None,
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the probe, finetuning and fusion runs persisted in the store, recomputing
    nothing."""
    from featstore.finetune import stored_finetune_records
    from featstore.fusion import stored_fusion_records
    from featstore.probe import stored_records
    from featstore.store import FeatureStore

    manifest = load_data(data, root, task)
    if backbone:
        sets = embedding_sets(manifest, store, backbone, image_size, dtype, precision,
                              results_store)
        ds = sets[0].dataset
    else:  # every set, and the finetuning runs of a dataset that has none
        fs = FeatureStore(store, results_store=results_store or default_results_store())
        ds = fs.dataset(manifest)
        sets = [s for s in ds.embedding_sets() if s.complete]
    probes = stored_records(sets) + stored_finetune_records(ds)
    fusions = stored_fusion_records([ds], keys=[s.key for s in sets] if backbone else None)
    if as_json:
        print_json([*probes, *fusions])  # fusion records carry "method" and "backbones"
        return
    if not probes and not fusions:
        err.print("no probe, finetuning or fusion results stored yet: run 'featstore "
                  "probe', 'featstore finetune' or 'featstore fuse'")
        return
    named = ds.embedding_sets()  # every set of the dataset: a fusion may hold sets not listed
    print_probe_records(probes, False, named)
    print_fusion_records(fusions, False, named)


def _f(name: str, *decls: str, **kw) -> typer.models.OptionInfo:
    """``featstore fuse``'s option for the :class:`FuseConfig` field ``name``."""
    return config_option(FuseConfig, name, *decls, **kw)


_ATTENTIONS = ",".join(options.default(FuseConfig, "attentions"))


@app.command()
def fuse(
    data: DataOpt,
    backbone: Annotated[list[str], typer.Option(
        "--backbone", "-b", help="Two to eight embedding sets (spec, alias or key prefix).")],
    store: StoreOpt = DEFAULT_STORE,
    image_size: ImageSizeOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    precision: PrecisionOpt = Precision.fp32,
    attention: Annotated[str, _f("attentions", "--attention",
                                 metavar=choices_metavar(choices.ATTENTIONS))] = _ATTENTIONS,
    dim: Annotated[int, _f("dim")] = options.default(FuseConfig, "dim"),
    fractions: FractionsOpt = DEFAULT_FRACTIONS,
    seeds: SeedsOpt = DEFAULT_GRID.seeds,
    bootstrap: BootstrapOpt = DEFAULT_GRID.n_bootstrap,
    heads_dir: Annotated[Path, typer.Option(
        parser=output_path, help="Where the trained DVME heads are saved.")]
    = Path("./featstore-heads"),
    baselines: Annotated[bool, _f("baselines")] = options.default(FuseConfig, "baselines"),
    recompute: RecomputeOpt = False,
    verify: VerifyOpt = True,
    device: DeviceOpt = DEFAULT_GRID.device,
    results_store: ResultsStoreOpt = None,
    cache: CacheOpt = None,
    root: RootOpt = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the DVME fusion head over several cached embedding sets, beside the baselines.

    Every run is persisted in the store; an identical run is read back, not recomputed.
    """
    from featstore.fusion import fuse_grid

    grid = grid_settings(fractions, seeds, bootstrap, device)
    config = checked(FuseConfig(attentions=split_option(attention, "--attention", str),
                                dim=dim, baselines=baselines, n_bootstrap=bootstrap))
    manifest = load_data(data, root, task)
    sets = embedding_sets(manifest, store, backbone, image_size, dtype, precision,
                          results_store, cache)
    with within_runs():
        records = fuse_grid(sets, task=manifest.task, fractions=grid.fractions, seeds=seeds,
                            **config.kwargs(), heads_dir=heads_dir, recompute=recompute,
                            device=device, verify=verify,
                            on_run=run_lines("fuse", len(grid.fractions)
                                             * len(grid.seed_list())))
    print_fusion_records(records, as_json, sets)
    print_notes(sets[0].dataset.store.notes)


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

    if download is not None:
        spec = parse_backbone(download)
        path = download_weights(spec)
        if path is None:
            out.print(f"{download}: random weights are made when the network is built; "
                      "nothing to download")
        elif spec.weights:
            out.print(f"{download}: the weights are the file given, {path}; nothing to "
                      "download")
        else:
            out.print(f"{download}: weights written to {path}")
        return
    rows = spec_rows()
    if as_json:
        print_json(rows)
        return
    out.print(models_table(rows))
    dirs = ", ".join(str(d) for d in weights_dirs())
    out.print(f"weights are searched in: @path on the command line, then {dirs} "
              f"(set ${WEIGHTS_DIR_ENV} to add a shared folder first)")


@app.command(name="ls")
def ls_(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """List datasets and embedding sets in the store."""
    from featstore.report.tables import store_table
    from featstore.store import FeatureStore
    from featstore.store.listing import list_sets

    fs = FeatureStore(store)
    rows = list_sets(fs)
    if as_json:
        print_json(rows)
    elif not rows:
        err.print(f"store {store}: no embeddings yet")
    else:
        out.print(store_table(rows, store))
    for _, error in fs.unreadable:
        err.print(f"[red]skipped[/] {escape(error)}", highlight=False)


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
        print_json(records)
        return
    for table in info_tables(records):
        out.print(table)


@app.command()
def verify(
    store: StoreOpt = DEFAULT_STORE,
    repair: Annotated[bool, typer.Option(
        help="Mark corrupt shards not done, so the next extract of the set recomputes "
             "them.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recompute every done shard's checksum; exit 1 if any shard is corrupt or unreadable,
    or a set's numbers were made by other weights than its key names."""
    from featstore.report.tables import verify_lines
    from featstore.store import FeatureStore
    from featstore.store.listing import verify_store

    fs = FeatureStore(store)
    rows = verify_store(fs, repair=repair)
    unreadable = [{"path": path, "error": error} for path, error in fs.unreadable]
    if as_json:
        print_json(rows + unreadable)
    else:
        for line in verify_lines(rows):
            out.print(line)
        for u in unreadable:
            out.print(f"UNREADABLE {escape(u['error'])}")
    if (unreadable or any(r["wrong_weights"] for r in rows)
            or (any(r["corrupt_shards"] for r in rows) and not repair)):
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
    results, records = run_demo(store, workdir, progress=None if as_json else progress_bar())
    if as_json:
        print_json({"extract": results, "probe": records})
        return
    for r in results:
        out.print(f"extract {r.alias}: {r.status}, {r.rows} x {r.dim}")
    print_probe_records(records, False)
    out.print(f"demo finished in {time.perf_counter() - t0:.1f}s; store: {store} "
              f"(try: featstore ls --store {store})")
