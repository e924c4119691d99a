"""``featstore copy`` and ``featstore export``: moving sets between stores, and out of
featstore."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from featstore.cli._shared import (
    DEFAULT_STORE,
    CacheOpt,
    Dtype,
    DtypeOpt,
    ImageSizeOpt,
    JsonOpt,
    Precision,
    PrecisionOpt,
    StoreOpt,
    VerifyOpt,
    app,
    err,
    out,
    output_path,
    print_json,
)

SourceData = Annotated[str | None, typer.Option(
    "--data", help="The dataset: any --data form (its files are read for its identity), or "
    "its group name or identity prefix in the store (as 'featstore ls' shows it).")]


def source_dataset(store, data: str):
    """The dataset group ``data`` names in ``store``: a --data value, else a group name."""
    from featstore.data import load_dataset
    from featstore.data.layouts import LAYOUTS

    kind = data.partition(":")[0]
    if Path(data).exists() or kind in LAYOUTS:
        return store.dataset(load_dataset(data))
    return store.find_dataset(data)


@app.command()
def copy(
    src: Annotated[str, typer.Argument(help="Source store (folder or s3://bucket/prefix).")],
    dst: Annotated[str, typer.Argument(help="Destination store.")],
    data: SourceData = None,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", "-b", help="Alias, key prefix or spec of a set to copy (repeat); "
        "default: every set.")] = None,
    image_size: ImageSizeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy embedding sets (and their runs) between stores: only the shards DST lacks, each
    checked against its checksum on arrival. A killed copy resumes where it stopped."""
    from featstore.extract import resolve_embedding_set
    from featstore.report.tables import copy_table
    from featstore.store import FeatureStore
    from featstore.store.transfer import (
        copy_finetune_runs,
        copy_fusion_runs,
        copy_set,
        finetuned_run_prefixes,
        import_dataset,
    )

    source, target = FeatureStore(src), FeatureStore(dst)
    if not source.exists():
        from featstore.errors import StoreError

        raise StoreError(f"no store at {src}")
    groups = [source_dataset(source, data)] if data else source.datasets()
    rows = []
    for ds in groups:
        sets = ([resolve_embedding_set(ds, b, image_size=image_size) for b in backbone]
                if backbone else ds.embedding_sets())
        # finetuning runs go along: all of them, or those whose models embedded the sets named
        prefixes = finetuned_run_prefixes(sets) if backbone else None
        if not sets and not (prefixes is None and ds.finetune_runs.by_id()):
            continue
        into = import_dataset(target, ds)
        tuned = copy_finetune_runs(ds, into, prefixes)
        if tuned and not as_json:
            err.print(f"{into.name}: {tuned} finetuning runs copied with their weights")
        for es in sets:
            rows.append(copy_set(es, into))
            if not as_json:
                r = rows[-1]
                err.print(escape(f"{r['dataset']}/{r['key'][:20]} {r['backbone']}: "
                                 f"{r['shards_copied']} shards copied, "
                                 f"{r['shards_already_there']} already there"))
        copy_fusion_runs(ds, into)
    if as_json:
        print_json(rows)
    elif rows:
        out.print(copy_table(rows, src, dst))
    else:
        err.print(f"store {src}: nothing to copy")


@app.command()
def export(
    data: Annotated[str, typer.Option("--data", help=SourceData.__metadata__[0].help)],
    backbone: Annotated[str, typer.Option(
        "--backbone", "-b", help="Alias, key prefix or spec of the set.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", parser=output_path, help="npy: a folder; h5, parquet: a file.")],
    fmt: Annotated[str, typer.Option(
        "--format", metavar="[npy|h5|parquet]",
        help="npy: embeddings.npy, ids.npy, split.npy, labels.npy, group.npy and meta.json; "
        "h5: one HDF5 file; parquet: one row per image (needs pyarrow).")] = "npy",
    store: StoreOpt = DEFAULT_STORE,
    image_size: ImageSizeOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    precision: PrecisionOpt = Precision.fp32,
    cache: CacheOpt = None,
    verify: VerifyOpt = True,
) -> None:
    """Write one complete set with its ids, split, labels and groups for other tools."""
    from featstore.extract import resolve_embedding_set
    from featstore.store import FeatureStore
    from featstore.store.transfer import export_set

    es = resolve_embedding_set(source_dataset(FeatureStore(store, cache=cache), data),
                               backbone, image_size=image_size,
                               dtype=dtype.value, precision=precision.value)
    for path in export_set(es, fmt, output, verify=verify):
        out.print(str(path))
