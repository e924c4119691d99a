"""Moving embedding sets: ``featstore copy`` between stores and ``featstore export`` to files
that tools outside featstore read."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featstore._hashing import sha256_bytes
from featstore.errors import CorruptShardError, StoreError
from featstore.outputs import new_output
from featstore.store.dataset import DatasetGroup, write_index_arrays
from featstore.store.embedding_set import EmbeddingSet
from featstore.store.feature_store import FeatureStore
from featstore.store.layout import (
    CHECKPOINTS_GROUP,
    EmbeddingKey,
    Embeddings,
    require_group,
)

EXPORT_FORMATS = ("npy", "h5", "parquet")


def import_dataset(dst: FeatureStore, src: DatasetGroup) -> DatasetGroup:
    """``src``'s dataset group in ``dst``: found by identity (or, for a group made before
    identities, by name and manifest hash), else created with the same name, attributes and
    index arrays."""
    identity = src.attrs.get("identity")
    for ds in dst.datasets():
        if (identity and ds.attrs.get("identity") == identity) or (
                ds.name == src.name and ds.manifest_sha256 == src.manifest_sha256):
            return ds
    root = dst._root_group(create=True)
    g = require_group(root, src.name)
    write_index_arrays(g, src.index)
    g.attrs.update(src.attrs)  # last: manifest_sha256 marks a finished group
    return DatasetGroup(dst, src.name, g)


def copy_set(es: EmbeddingSet, dst_ds: DatasetGroup, *,
             on_shard: Callable[[], None] | None = None) -> dict[str, Any]:
    """Copy one set's done shards that ``dst_ds`` lacks, each checked against the source's
    checksum before it is written; then its probe runs. Resumable: a killed copy leaves only
    whole, done shards, and the next copy skips them.

    Raises
    ------
    CorruptShardError
        A source shard fails its checksum or cannot be read (nothing of it is written).
    """
    arr = es.group["embeddings"]
    attrs = es.attrs
    key = EmbeddingKey(attrs["key_fields"])
    if key.digest != es.key:
        raise StoreError(f"{es}: its key fields do not hash to its key {es.key[:12]}; the "
                         "source store is damaged (featstore verify)")
    target = dst_ds.create_embedding_set(
        key, dim=es.dim, dtype=es.dtype, alias=es.alias, provenance=attrs.get("provenance", {}),
        shard_rows=es.shard_rows, chunk_rows=int(arr.chunks[0]))
    if target.shard_rows != es.shard_rows:
        raise StoreError(f"{dst_ds.store.root}: {target} has {target.shard_rows}-row shards, "
                         f"the source {es.shard_rows}: cannot copy shard by shard")
    sums = es.checksums()
    missing = es.missing_mask()
    skipped = es.skipped()
    have = target.done_mask()
    copied = 0
    for shard in np.flatnonzero(es.done_mask() & ~have):
        start, stop = es.shard_bounds(int(shard))
        data = np.empty((stop - start, es.dim), dtype=es.dtype)
        error = es.reader.load(int(shard), data, sums[shard].tobytes())
        if error:
            raise CorruptShardError(es._corrupt_message([(int(shard), error)]))
        ids = es.dataset.index["ids"][start:stop]
        miss = missing[start:stop]
        reasons = {str(i): skipped[str(i)] for i in ids[miss] if str(i) in skipped}
        target.write_shard(int(shard), data, missing=miss, reasons=reasons)
        copied += 1
        if on_shard:
            on_shard()
    if target.complete and target.attrs.get("status") != "complete":
        target.mark_complete({k: attrs[k] for k in ("finished", "skipped") if k in attrs})
    runs = 0
    for run_id, run in es.probe_runs.by_id().items():
        head = es.probe_head(run_id)  # a linear probe's weights (LP-FT starts from them)
        if head is not None and target.probe_head(run_id) is None:
            target.save_probe_head(run_id, head)
        if target.probe_runs.get(run_id) is None:
            target.probe_runs.save(run_id, run)
            runs += 1
    return {"dataset": dst_ds.name, "backbone": es.alias, "key": es.key,
            "shards_copied": copied, "shards_already_there": int(have.sum()),
            "shards": es.n_shards, "probe_runs_copied": runs,
            "status": "complete" if target.complete else "incomplete"}


def copy_fusion_runs(src: DatasetGroup, dst: DatasetGroup) -> int:
    """Fusion runs of ``src`` whose embedding sets are all in ``dst`` and that it lacks."""
    keys = {es.key for es in dst.embedding_sets()}
    copied = 0
    for run_id, payload in src.fusion_runs.by_id().items():
        if set(payload.get("config", {}).get("keys", [None])) <= keys and \
                dst.fusion_runs.get(run_id) is None:
            dst.fusion_runs.save(run_id, payload)
            copied += 1
    return copied


def copy_finetune_runs(src: DatasetGroup, dst: DatasetGroup,
                       prefixes: Sequence[str] | None = None) -> int:
    """Finished finetuning runs of ``src`` that ``dst`` lacks, with their best weights and
    the backbone weights ``finetuned:<run>`` embeds with, each checked against its recorded
    sha256 before it is written; the run record goes last, so a killed copy never leaves a
    finished run without its weights. ``prefixes``: only runs whose id starts with one.
    Unfinished runs stay behind (their resume state belongs to the store they run in).

    Raises
    ------
    StoreError
        A finished run's weights are missing or damaged in the source.
    """
    s_obj, d_obj = src.store.objects, dst.store.objects
    copied = 0
    for run_id, run in src.finetune_runs.by_id().items():
        if run.get("status") != "complete" or dst.finetune_runs.get(run_id) is not None or (
                prefixes is not None and not any(run_id.startswith(p) for p in prefixes)):
            continue
        for name in ("best.pt", "backbone.pt"):
            data = s_obj.get(f"{CHECKPOINTS_GROUP}/{src.name}/{run_id}/{name}")
            damaged = data is None or (name == "backbone.pt" and
                                       sha256_bytes(data) != run.get("finetuned_sha256"))
            if damaged:
                raise StoreError(f"{src.store.root}: finetuning run {run_id[:12]} of "
                                 f"{src.name}: {name} is "
                                 f"{'missing' if data is None else 'damaged'}; not copied")
            d_obj.put(f"{CHECKPOINTS_GROUP}/{dst.name}/{run_id}/{name}", data)
        dst.finetune_runs.save(run_id, run)
        copied += 1
    return copied


def finetuned_run_prefixes(sets: Sequence[EmbeddingSet]) -> list[str]:
    """The finetuning runs (id prefixes) whose models embedded these sets."""
    names = (es.provenance.spec for es in sets)
    return [n.removeprefix("finetuned:").rpartition("/")[2] for n in names
            if n.startswith("finetuned:")]


def export_set(es: EmbeddingSet, fmt: str, output: str | Path, *,
               verify: bool = True) -> list[Path]:
    """Write a complete set with its ids, split, labels and groups for tools outside
    featstore: ``npy`` (a folder of .npy files and meta.json), ``h5`` (one HDF5 file, h5py)
    or ``parquet`` (one row per image, the embedding a fixed-size list column; pyarrow).
    An export that fails leaves nothing it created.

    Raises
    ------
    StoreError
        An unknown format, or pyarrow missing for parquet.
    FeatstoreError
        ``output`` cannot be written.
    """
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"unknown export format {fmt!r} (expected one of "
                         f"{', '.join(EXPORT_FORMATS)})")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise StoreError("--format parquet needs pyarrow (pip install "
                             "'featstore[parquet]')") from None
    emb = es.load(verify=verify)
    meta = {"dataset": emb.dataset, "backbone": emb.alias, "key": emb.key,
            "label_names": list(emb.label_names), "rows": len(emb.ids), "dim": emb.X.shape[1],
            "dtype": str(emb.X.dtype), "missing_rows": emb.n_missing,
            "provenance": emb.attrs.get("provenance", {})}
    columns = {"ids": _strings(emb.ids), "split": _strings(emb.split),
               "labels": emb.labels, "group": _strings(emb.group)}
    with new_output(output, "-o", folder=fmt == "npy") as path:
        return _EXPORTS[fmt](path, emb, columns, meta)


def _export_npy(output: Path, emb: Embeddings, columns: dict[str, np.ndarray],
                meta: dict[str, Any]) -> list[Path]:
    files = [output / "embeddings.npy", *(output / f"{k}.npy" for k in columns),
             output / "meta.json"]
    np.save(files[0], emb.X)
    for values, path in zip(columns.values(), files[1:-1], strict=True):
        np.save(path, values)
    files[-1].write_text(json.dumps(meta, indent=1) + "\n")
    return files


def _export_h5(output: Path, emb: Embeddings, columns: dict[str, np.ndarray],
               meta: dict[str, Any]) -> list[Path]:
    import h5py

    with h5py.File(output, "w") as f:
        f.create_dataset("embeddings", data=emb.X, chunks=(min(len(emb.X), 1024),
                                                            emb.X.shape[1]))
        for name, values in columns.items():
            f.create_dataset(name, data=values.astype(object) if values.dtype.kind == "U"
                             else values, dtype=h5py.string_dtype() if
                             values.dtype.kind == "U" else values.dtype)
        f.attrs["featstore"] = json.dumps(meta)
    return [output]


def _export_parquet(output: Path, emb: Embeddings, columns: dict[str, np.ndarray],
                    meta: dict[str, Any]) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(emb.X.reshape(-1))
    table = pa.table({
        "id": columns["ids"], "split": columns["split"], "group": columns["group"],
        **_label_columns(emb.labels, emb.label_names),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.X.shape[1])})
    table = table.replace_schema_metadata({"featstore": json.dumps(meta)})
    pq.write_table(table, output)
    return [output]


_EXPORTS = {"npy": _export_npy, "h5": _export_h5, "parquet": _export_parquet}


def _strings(values: np.ndarray) -> np.ndarray:
    """A fixed-width unicode array (zarr gives numpy's variable-width StringDType, which
    .npy cannot hold without pickle)."""
    return np.asarray(values.tolist(), dtype=str)


def _label_columns(labels: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    if labels.shape[1] == 1:
        return {"label": labels[:, 0]}
    return {f"label_{n}": labels[:, k] for k, n in enumerate(names)}
