"""The extraction engine: frozen backbones over a manifest, written shard by shard."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Protocol

import numpy as np
import torch

from featstore.data.images import RowDataset, collate_rows
from featstore.data.manifest import Manifest
from featstore.errors import ImageReadError
from featstore.models.registry import BackboneSpec, LoadedBackbone, build_backbone
from featstore.store.zarr_store import (
    DEFAULT_SHARD_ROWS,
    EmbeddingKey,
    EmbeddingSet,
    FeatureStore,
)


class ExtractProgress(Protocol):
    """What the engine reports while it works (the CLI draws a progress bar from it)."""

    def start(self, alias: str, total_rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...

    def finish(self) -> None: ...


@dataclass
class ExtractResult:
    """Outcome of one backbone over one dataset."""

    dataset: str
    alias: str
    key: str
    dim: int
    rows: int
    status: str  # "extracted", "resumed" or "cached"
    shards_written: int
    shards_total: int
    seconds: float
    images_per_s: float
    random_weights: bool

    def to_dict(self) -> dict:
        return asdict(self)


def default_workers(n_rows: int, batch_size: int) -> int:
    """DataLoader workers: none for a single batch, else up to 4 (bounded by the CPUs)."""
    if n_rows <= batch_size:
        return 0
    return max(1, min(4, os.cpu_count() or 1))


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def provenance(loaded: LoadedBackbone, manifest: Manifest, *, batch_size: int,
               device: torch.device) -> dict:
    """What produced an embedding set, recorded in its attrs."""
    spec = loaded.spec
    return {
        "backbone": spec.name,
        "architecture": spec.architecture,
        "weights": "random (untrained, seed 0)" if spec.is_random else str(spec.weights),
        "random_weights": spec.is_random,
        "weights_sha256": loaded.weights_sha256,
        "preprocessing": loaded.preprocessing.to_dict(),
        "layer": spec.layer,
        "manifest": manifest.name,
        "manifest_sha256": manifest.sha256,
        "batch_size": batch_size,
        "device": str(device),
        "versions": {p: version(p) for p in ("featstore", "torch", "timm", "zarr")},
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def resolve_key(spec: BackboneSpec, dtype: str = "float32") -> tuple[LoadedBackbone, EmbeddingKey]:
    """Build a spec's backbone and the embedding key of its numbers (weights hashed as loaded)."""
    loaded = build_backbone(spec)
    return loaded, EmbeddingKey(loaded.key_fields(dtype))


def shard_batches(es: EmbeddingSet, shards: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row batches that never cross a shard boundary.

    Every shard is computed with the same batch layout whichever shards were done before,
    so a resumed extract gives the same bits as an uninterrupted one.
    """
    batches = []
    for s in shards:
        start, stop = es.shard_bounds(s)
        batches.extend(list(range(b, min(b + batch_size, stop)))
                       for b in range(start, stop, batch_size))
    return batches


def extract_embeddings(
    manifest: Manifest,
    backbones: Sequence[BackboneSpec],
    store: FeatureStore,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: ExtractProgress | None = None,
) -> list[ExtractResult]:
    """Embed every row of ``manifest`` with each backbone and write the embeddings to ``store``.

    Work resumes from the shards already marked done; a finished set is a cache hit that
    runs no forward pass.

    Raises
    ------
    ManifestError
        A file named by the manifest is missing (checked before any work).
    ImageReadError
        An image cannot be decoded; shards finished before it stay in the store.
    BackboneError
        A backbone cannot be built or its checkpoint does not load strictly.
    """
    manifest.check_files()
    dev = resolve_device(device)
    ds = store.dataset(manifest, create=True)
    results = []
    for spec in backbones:
        t0 = time.perf_counter()
        loaded, key = resolve_key(spec, dtype)
        es = ds.create_embedding_set(
            key, dim=loaded.dim, dtype=dtype, alias=loaded.alias, shard_rows=shard_rows,
            provenance=provenance(loaded, manifest, batch_size=batch_size, device=dev),
        )
        pending = es.pending_shards()
        resumed = len(pending) < es.n_shards
        if pending:
            _run_shards(loaded, manifest, es, pending, batch_size=batch_size,
                        num_workers=num_workers, device=dev, progress=progress)
        seconds = time.perf_counter() - t0
        rows_done = sum(es.shard_bounds(s)[1] - es.shard_bounds(s)[0] for s in pending)
        if pending:
            es.mark_complete({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        results.append(ExtractResult(
            dataset=ds.name, alias=loaded.alias, key=key.digest, dim=loaded.dim,
            rows=len(manifest),
            status="cached" if not pending else ("resumed" if resumed else "extracted"),
            shards_written=len(pending), shards_total=es.n_shards, seconds=seconds,
            images_per_s=rows_done / seconds if rows_done else 0.0,
            random_weights=spec.is_random,
        ))
    return results


def _run_shards(loaded: LoadedBackbone, manifest: Manifest, es: EmbeddingSet,
                shards: Sequence[int], *, batch_size: int, num_workers: int | None,
                device: torch.device, progress: ExtractProgress | None) -> None:
    """Forward the rows of ``shards`` and write each shard as soon as it is whole."""
    prep = loaded.preprocessing
    dataset = RowDataset(manifest, prep.transform(), (3, prep.input_size, prep.input_size))
    batches = shard_batches(es, shards, batch_size)
    n_rows = sum(len(b) for b in batches)
    workers = default_workers(n_rows, batch_size) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_rows,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
    )
    model = loaded.model.to(device)
    if progress:
        progress.start(loaded.alias, n_rows)
    shard_iter = iter(shards)
    shard = next(shard_iter)
    start, stop = es.shard_bounds(shard)
    buf = np.empty((stop - start, es.dim), dtype=es.dtype)
    try:
        with torch.inference_mode():
            for x, rows, errors in loader:
                bad = [e for e in errors if e]
                if bad:
                    more = f" (and {len(bad) - 1} more in this batch)" if len(bad) > 1 else ""
                    raise ImageReadError(bad[0] + more)
                out = model(x.to(device, non_blocking=True)).float().cpu().numpy()
                r0 = int(rows[0])
                buf[r0 - start:r0 - start + len(out)] = out
                if progress:
                    progress.advance(len(out))
                if int(rows[-1]) + 1 == stop:
                    es.write_shard(shard, buf)
                    shard = next(shard_iter, None)
                    if shard is not None:
                        start, stop = es.shard_bounds(shard)
                        buf = np.empty((stop - start, es.dim), dtype=es.dtype)
    finally:
        if progress:
            progress.finish()
        loaded.model.to("cpu")
