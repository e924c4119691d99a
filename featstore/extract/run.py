"""Extraction, the stage: check the options, answer a cache hit from the store alone, else
run the engine (:mod:`featstore.extract.engine`).

A cache hit costs what it reads: the backbones' identities remembered from their last build
(:mod:`featstore.models.identity`), the dataset group and each set's sealed attrs. It
imports neither torch nor timm, builds no network and reads no shard (every read of a shard
checks it against its checksum; ``verify`` checks them all now).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from featstore.choices import DEFAULT_MAX_PIXELS
from featstore.errors import FeatstoreError, StoreError
from featstore.extract.config import ExtractConfig
from featstore.extract.keys import embedding_key
from featstore.extract.pixels import device_type, key_pixels
from featstore.extract.results import ExtractProgress, ExtractResult
from featstore.store.layout import DEFAULT_SHARD_ROWS

if TYPE_CHECKING:
    from featstore.data.manifest import Manifest
    from featstore.models.registry import BackboneSpec
    from featstore.store.embedding_set import EmbeddingSet
    from featstore.store.feature_store import FeatureStore


def extract_embeddings(
    manifest: Manifest,
    backbones: Sequence[BackboneSpec],
    store: FeatureStore,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    precision: str = "fp32",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    on_error: str = "fail",
    compile: bool = False,
    claim_timeout: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    resize: str = "auto",
    decode: str = "cpu",
    verify: bool = False,
    progress: ExtractProgress | None = None,
) -> list[ExtractResult]:
    """Embed every row of ``manifest`` with each backbone and write the embeddings to ``store``.

    All backbones share one pass over the images: one decode per image, one tensor per
    distinct preprocessing. Work resumes from the shards already marked done; a finished set
    is a cache hit that runs no forward pass and reads no shard. Under torchrun
    (``WORLD_SIZE`` > 1) rank 0 creates the arrays, the ranks split the pending shards, and
    the result equals a single-process run. Concurrent extracts of one key share the work
    through shard claims; a claim left by a dead process is taken over.

    An image file declaring more than ``max_pixels`` pixels is unreadable (None: no limit).
    ``on_error="skip"`` stores an unreadable image's row as missing (NaN, flagged in the
    ``missing`` mask, its id and reason recorded) instead of stopping.

    Workers hand over uint8 pixels; normalisation runs batched on ``device`` (see
    :mod:`featstore.extract.pixels`). ``resize``: where a source of equal-sized uint8
    arrays is resized, ``device`` (batched; its own key), ``cpu`` (PIL, per image) or
    ``auto`` (the device on CUDA; a finished set made either way is reused). ``decode``:
    where image files are decoded, ``cpu`` (PIL in the workers) or ``device`` (JPEGs by
    torchvision where the model runs, nvJPEG on CUDA, and every row resized there; its own
    key). ``verify``
    checks every shard of finished sets now and recomputes those that fail.

    Raises
    ------
    ManifestError
        A file named by the manifest is missing (checked before any work).
    ImageReadError
        With ``on_error="fail"``: an image cannot be decoded; finished shards stay.
    BackboneError
        A backbone cannot be built or its checkpoint does not load strictly.
    StoreError
        The disk filled up (or the quota on it): where, and the finished shards kept.
    FeatstoreError
        ``$FEATSTORE_CLAIM_TIMEOUT`` is not a number of seconds > 0.
    """
    ExtractConfig(batch_size=batch_size, workers=num_workers, device=device,
                  precision=precision, dtype=dtype, shard_rows=shard_rows, on_error=on_error,
                  resize=resize, decode=decode, max_pixels=max_pixels, compile=compile,
                  claim_timeout=claim_timeout, verify=verify).check()
    from featstore.extract.claims import claim_timeout as timeout_of

    timeout_of(claim_timeout)  # $FEATSTORE_CLAIM_TIMEOUT is checked before any work too
    # a named accelerator is checked by torch (the engine) even when nothing is left to do
    if not verify and device in ("auto", "cpu") and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        hit = cached_results(manifest, backbones, store, dtype=dtype, precision=precision,
                             resize=resize, decode=decode, device=device)
        if hit is not None:
            return hit
    from featstore.extract.engine import run_extract

    try:
        return run_extract(manifest, backbones, store, batch_size=batch_size,
                           num_workers=num_workers, device=device, dtype=dtype,
                           precision=precision, shard_rows=shard_rows, on_error=on_error,
                           compile=compile, claim_timeout=claim_timeout,
                           max_pixels=max_pixels, resize=resize, decode=decode,
                           verify=verify, progress=progress)
    except OSError as e:
        if e.errno not in _OUT_OF_SPACE:
            raise
        raise _out_of_space(e, manifest, store) from e


#: what a write raises when the disk (or the user's quota on it) is full
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _out_of_space(e: OSError, manifest: Manifest, store: FeatureStore) -> StoreError:
    """The error of an extract that ran out of space: where it was writing, and the finished
    shards that stay (an extract resumes from them, bit for bit)."""
    where = f"{store.root.rstrip('/')}/{manifest.group_name}"
    try:
        ds = store.dataset(manifest)
        where = f"{store.root.rstrip('/')}/{ds.name}"
        sets = [es for es in ds.embedding_sets() if not es.complete]
    except FeatstoreError:  # the dataset group itself could not be written
        sets = []
    done = [(es, int(es.done_mask().sum())) for es in sets]
    kept = sum(n for _, n in done)
    detail = "; ".join(f"{es.alias}: {n} of {es.n_shards}" for es, n in done)
    return StoreError(
        f"{(e.strerror or str(e)).lower()} writing {where}: the {kept} finished "
        f"shard{'' if kept == 1 else 's'} {'is' if kept == 1 else 'are'} kept"
        f"{f' ({detail})' if detail else ''}; free space and run the same command to resume")



def cached_results(manifest: Manifest, backbones: Sequence[BackboneSpec],
                   store: FeatureStore, *, dtype: str = "float32", precision: str = "fp32",
                   resize: str = "auto", decode: str = "cpu", device: str = "auto",
                   ) -> list[ExtractResult] | None:
    """The results of an extract whose every set is finished in ``store`` (a cache hit),
    from the remembered identities and the sets' attrs alone; None when anything is left
    to do or cannot be told without building a backbone."""
    from featstore.models.identity import remembered

    t0 = time.perf_counter()
    try:
        ds = store.dataset(manifest)
    except FeatstoreError:
        return None
    found: list[tuple[BackboneSpec, int, EmbeddingSet]] = []
    for spec in backbones:
        ident = remembered(spec)
        if ident is None:
            return None
        es = None
        for fields in key_pixels(manifest, ident.preprocessing, resize,
                                 device_type(device), decode):
            key = embedding_key(ident, dtype, precision, *fields)
            candidate = ds.open_set(key.short)
            if (candidate is not None and candidate.key == key.digest
                    and candidate.attrs.get("status") == "complete" and candidate.complete):
                es = candidate
                break
        if es is None:
            return None
        found.append((spec, ident.dim, es))
    results = []
    for spec, dim, es in found:
        es.seal()  # a set completed before sealing: read faster from now on
        skipped = es.skipped()
        results.append(ExtractResult(
            dataset=es.dataset.name, alias=spec.alias, key=es.key, dim=dim,
            rows=len(manifest), status="cached", shards_written=0, shards_total=es.n_shards,
            seconds=time.perf_counter() - t0, images_per_s=0.0,
            random_weights=spec.is_random, skipped=sorted(skipped), precision=precision))
    return results
