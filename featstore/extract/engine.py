"""The extraction engine: frozen backbones over a manifest, written shard by shard.

One pass serves many backbones: each image is decoded once, turned into one tensor per
distinct preprocessing, and fed to every backbone that still needs its shard. Shards are the
unit of work, of resume and of cooperation: a process claims a shard (see
:mod:`featstore.extract.claims`) before computing it and writes it whole, so torchrun ranks,
concurrent extracts of one key and re-runs after a crash never write one shard twice and
never leave a shard marked done without its data and checksum.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import torch

from featstore.data.images import ViewsDataset, collate_views
from featstore.data.manifest import Manifest
from featstore.errors import BackboneError, FeatstoreError, ImageReadError
from featstore.extract.claims import ClaimBoard
from featstore.extract.keys import DECODE, check_weights, embedding_key
from featstore.extract.pixels import (
    Decoded,
    PixelPath,
    decode_rows,
    jpeg_decoder,
    key_pixels,
    pixel_paths,
)
from featstore.extract.results import CPU_BATCH_SIZE, ExtractProgress, ExtractResult
from featstore.extract.writer import ShardWriter
from featstore.models.build import build_backbone
from featstore.models.identity import BackboneIdentity
from featstore.models.registry import BackboneSpec, LoadedBackbone
from featstore.models.resolve import identify
from featstore.runtime import (
    Distributed,
    autocast,
    distributed_from_env,
    resolve_device,
)
from featstore.store.embedding_set import EmbeddingSet
from featstore.store.feature_store import FeatureStore
from featstore.store.layout import EmbeddingKey, Provenance

WAIT_POLL_S = 0.5
# rows a loader worker decodes per hand-over: small, so many workers fill one model batch
# together (a worker building a whole 1024-row batch alone keeps the model waiting)
WORKER_BATCH = 32


def default_workers(n_rows: int, batch_size: int) -> int:
    """DataLoader workers: none for a single batch, else up to 4 (bounded by the CPUs)."""
    if n_rows <= batch_size:
        return 0
    return max(1, min(4, os.cpu_count() or 1))


def _user() -> str | None:
    """Who ran the extract (the login name), recorded with the host; never credentials."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container with an unnamed uid)
        return None


def provenance(loaded: LoadedBackbone, manifest: Manifest, *, batch_size: int,
               device: torch.device, precision: str = "fp32", batch_size_auto: bool = False,
               world: int = 1, on_error: str = "fail", compiled: bool = False,
               pixels: PixelPath | None = None) -> dict:
    """What produced an embedding set, recorded in its attrs."""
    spec = loaded.spec
    if pixels is not None and pixels.encoded:
        resize = (f"batched on the device ({pixels.key_resize}); JPEGs decoded there in full "
                  f"by {jpeg_decoder(device if device.type == 'cuda' else 'cpu')[1]}, "
                  "then reduced as PIL's draft")
    elif pixels is not None and pixels.raw_shape is not None:
        resize = "batched on the device" + (f" ({pixels.key_resize})" if pixels.keyed else
                                            ", none needed")
    else:
        resize = "PIL, in the loader"
    return Provenance(
        spec=spec.name,
        architecture=spec.architecture,
        weights="random (untrained, seed 0)" if spec.is_random else str(spec.weights),
        random_weights=spec.is_random,
        weights_sha256=loaded.weights_sha256,
        preprocessing=loaded.preprocessing.to_dict(),
        decode=pixels.key_decode if pixels is not None else DECODE,
        resize=resize,
        layer=spec.layer,
        manifest=manifest.name,
        manifest_sha256=manifest.sha256,
        dataset_identity=manifest.identity,
        batch_size=batch_size,
        batch_size_auto=batch_size_auto,
        precision=precision,
        compiled=compiled,
        device=str(device),
        world_size=world,
        on_error=on_error,
        versions={p: version(p) for p in ("featstore", "torch", "timm", "zarr")},
        host=platform.node(),
        user=_user(),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    ).to_dict()


def fit_batch_size(peaks: dict[int, float], budget: float, *, cap: int = 1024,
                   multiple: int = 8) -> int:
    """Largest batch whose predicted peak memory fits ``budget`` bytes.

    ``peaks`` maps two or more measured batch sizes to peak bytes; memory is modelled as
    fixed + per-image * batch (a least-squares line), rounded down to ``multiple``.
    """
    b = np.array(sorted(peaks), dtype=float)
    m = np.array([peaks[int(k)] for k in b], dtype=float)
    per_image, fixed = np.polyfit(b, m, 1)
    if per_image <= 0:
        return cap
    best = int((budget - fixed) // per_image)
    return int(max(multiple, min(cap, best - best % multiple)))


def auto_batch_size(models: Sequence[tuple[torch.nn.Module, tuple[int, ...]]],
                    device: torch.device, *, margin: float = 0.8, precision: str = "fp32",
                    channels_last: bool = False) -> int:
    """The batch size to use when none is given: the largest that fits, with a margin.

    On CUDA, each model's peak memory is measured at batch 8 and 16 and the free memory
    times ``margin`` decides (every model runs on the same batch, so the tightest wins). On
    CPU memory is not the limit: :data:`CPU_BATCH_SIZE`.
    """
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    sizes = []
    for model, shape in models:
        peaks = {}
        for b in (8, 16):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.zeros((b, *shape), device=device)
            if channels_last and x.ndim == 4:
                x = x.to(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast(device, precision):
                model(x)
            peaks[b] = torch.cuda.max_memory_allocated(device)
            del x
        sizes.append(fit_batch_size(peaks, free * margin))
    torch.cuda.empty_cache()
    return min(sizes)


def _is_cnn(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) and m.kernel_size != m.stride
               for m in model.modules())


def _recompute_corrupt(store: FeatureStore, manifest: Manifest,
                       keys: Sequence[EmbeddingKey], *,
                       complete_too: bool = False) -> dict[str, list[int]]:
    """Check every done shard of these keys' unfinished sets (with ``complete_too``, of the
    finished ones as well) against its checksum; mark the ones that fail (or cannot be
    read) not done, so this extract recomputes them. {key: shards}. A finished set is a
    cache hit that reads nothing: its shards are checked whenever they are read."""
    try:
        ds = store.dataset(manifest)
    except FeatstoreError:  # no group yet, or a damaged index (rewritten on creation)
        return {}
    out = {}
    for key in keys:
        try:
            es = ds.embedding_set(key.digest)
        except FeatstoreError:
            continue
        if es.complete and not complete_too:
            continue
        bad = es.verify()
        if bad:
            es.invalidate(bad)
            out[key.digest] = bad
    return out


def _key(store: FeatureStore, manifest: Manifest, ident: BackboneIdentity | LoadedBackbone,
         dtype: str, precision: str, path: PixelPath, *, resize: str, decode: str,
         device_type: str | None) -> EmbeddingKey:
    """The key this extract writes for a backbone: the first finished set these options
    accept (:func:`featstore.extract.pixels.key_pixels`: PIL's or the GPU's resize under
    ``--resize auto``, either device's decoder under ``--decode device``), in the order the
    cache hit (:func:`featstore.extract.run.cached_results`) and pipeline plans take them
    (``device_type`` None for ``--device auto``, as they do), else its pixel path's."""
    key = embedding_key(ident, dtype, precision, path.key_resize, path.key_decode)
    for fields in key_pixels(manifest, ident.preprocessing, resize, device_type, decode):
        alt = embedding_key(ident, dtype, precision, *fields)
        if _complete(store, manifest, alt):
            return alt
    return key


def _complete(store: FeatureStore, manifest: Manifest, key: EmbeddingKey) -> bool:
    """Whether ``key``'s set of ``manifest`` is already finished (read only)."""
    try:
        return store.dataset(manifest).embedding_set(key.digest).complete
    except FeatstoreError:  # no dataset group or no such set yet
        return False


@dataclass(eq=False)
class _Job:
    """One backbone's work in this run."""

    loaded: LoadedBackbone | BackboneIdentity  # an identity: a finished set (no model)
    key: EmbeddingKey
    es: EmbeddingSet
    view: int
    model: torch.nn.Module | None
    pending_at_start: list[int]
    channels_last: bool = False
    written: int = 0
    rows_written: int = 0
    lost: int = 0

    def claim(self, shard: int) -> str:
        return ClaimBoard.path(self.es.dataset.name, self.key.short, shard)


def run_extract(
    manifest: Manifest,
    backbones: Sequence[BackboneSpec],
    store: FeatureStore,
    *,
    batch_size: int | None,
    num_workers: int | None,
    device: str,
    dtype: str,
    precision: str,
    shard_rows: int,
    on_error: str,
    compile: bool,
    claim_timeout: float | None,
    max_pixels: int | None,
    resize: str,
    decode: str,
    verify: bool,
    progress: ExtractProgress | None,
) -> list[ExtractResult]:
    """The work of :func:`featstore.extract.extract_embeddings` (options checked there)."""
    manifest.check_files()
    dist = distributed_from_env(device)
    dev = resolve_device(device, dist.local_rank)
    board = ClaimBoard(store, timeout=claim_timeout)
    t0 = time.perf_counter()
    jobs: list[_Job] = []
    try:
        idents = [identify(spec) for spec in backbones]
        preps = list(dict.fromkeys(i.preprocessing for i in idents))
        paths = pixel_paths(manifest, preps, resize=resize, device_type=dev.type,
                            decode=decode)

        def key_of(ident: BackboneIdentity | LoadedBackbone) -> EmbeddingKey:
            return _key(store, manifest, ident, dtype, precision,
                        paths[preps.index(ident.preprocessing)], resize=resize, decode=decode,
                        device_type=None if device == "auto" else dev.type)

        built = [(ident, key_of(ident)) for ident in idents]
        recomputed = (_recompute_corrupt(store, manifest, [k for _, k in built],
                                         complete_too=verify) if dist.rank == 0 else {})
        cl = dev.type == "cuda"
        # only a set with work to do needs its network (a remembered identity is built now);
        # a network built from other weights than the remembered ones (the file changed
        # since it was looked at) is keyed by what was built, never by the memory
        for i, (ident, key) in enumerate(built):
            if not (_complete(store, manifest, key) or isinstance(ident, LoadedBackbone)):
                loaded = build_backbone(ident.spec)
                built[i] = (loaded, key if loaded.weights_sha256 == ident.weights_sha256
                            else key_of(loaded))
        keys = np.array([key.digest for _, key in built])
        if dist.active and not (dist.gather(keys).reshape(dist.world, -1) == keys).all():
            raise BackboneError("the ranks of this torchrun job built different weights (a "
                                "weights file changed while they started): run it again")
        todo = [(loaded, key) for loaded, key in built if not _complete(store, manifest, key)]
        if batch_size is None:  # measured only when there is work (a cache hit runs nothing)
            bs = auto_batch_size(
                [(loaded.model.to(dev), (3, p.input_size, p.input_size))
                 for loaded, _ in todo for p in [loaded.preprocessing]],
                dev, precision=precision, channels_last=cl) if todo else CPU_BATCH_SIZE
        else:
            bs = batch_size

        def create_sets() -> list[EmbeddingSet]:
            ds = store.dataset(manifest, create=dist.rank == 0)
            return [ds.create_embedding_set(
                key, dim=loaded.dim, dtype=dtype, alias=loaded.alias, shard_rows=shard_rows,
                provenance=provenance(loaded, manifest, batch_size=bs, device=dev,
                                      precision=precision, batch_size_auto=batch_size is None,
                                      world=dist.world, on_error=on_error,
                                      compiled=compile,
                                      pixels=paths[preps.index(loaded.preprocessing)]))
                for loaded, key in built]

        sets: list[EmbeddingSet] = []
        if dist.rank == 0:  # one creator: rank 0, and among concurrent extracts, the lock
            # keyed by identity: two extracts of one dataset under two names make one group
            lock = ClaimBoard.path(f"dataset-{manifest.identity[:16]}", "_create", "lock")
            board.claim_wait(lock)
            try:
                sets = create_sets()
            finally:
                board.release(lock)
        dist.barrier()
        if dist.rank != 0:
            sets = create_sets()
        for (loaded, key), es in zip(built, sets, strict=True):
            pending = es.pending_shards()
            model = getattr(loaded, "model", None)
            is_cnn = cl and model is not None and _is_cnn(model)
            if pending:  # a finished set's model never moves to the device
                if model is None:  # finished when looked at, undone since (--verify, repair)
                    loaded = build_backbone(loaded.spec)
                    model = loaded.model
                    is_cnn = cl and _is_cnn(model)
                check_weights(loaded, key, es)
                model = model.to(dev).eval()
                if is_cnn:
                    model = model.to(memory_format=torch.channels_last)
                if compile:
                    model = torch.compile(model)
            jobs.append(_Job(loaded, key, es, preps.index(loaded.preprocessing), model,
                             pending, channels_last=is_cnn))
        # every rank has taken its pending shards before any rank writes one: rank 0's
        # count of what the job wrote (its own and the other ranks') starts from there
        dist.barrier()
        dataset = ViewsDataset(manifest, [p.view for p in paths], max_pixels=max_pixels)
        for rows_per_shard in sorted({j.es.shard_rows for j in jobs}):
            group = [j for j in jobs if j.es.shard_rows == rows_per_shard and j.pending_at_start]
            while group:
                wrote = _run_pass(group, dataset, paths, board, dist, batch_size=bs,
                                  num_workers=num_workers, device=dev, precision=precision,
                                  on_error=on_error, progress=progress)
                group = [j for j in group if j.es.pending_shards()]
                if group and not wrote:  # the rest is claimed by live processes: wait
                    time.sleep(WAIT_POLL_S)
        dist.barrier()
        results = []
        for j in jobs:
            skipped = j.es.skipped()
            if dist.rank == 0 and j.es.attrs.get("status") != "complete":
                j.es.mark_complete({
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "skipped": {"count": len(skipped), "ids": sorted(skipped),
                                "reasons": skipped},
                })
                board.clear(j.es.dataset.name, j.key.short)
            elif dist.rank == 0:
                j.es.seal()  # a set completed before sealing: read faster from now on
            seconds = time.perf_counter() - t0
            status = ("cached" if not j.pending_at_start else
                      "resumed" if len(j.pending_at_start) < j.es.n_shards else "extracted")
            results.append(ExtractResult(
                dataset=j.es.dataset.name, alias=j.loaded.alias, key=j.key.digest,
                dim=j.loaded.dim, rows=len(manifest), status=status,
                shards_written=j.written, shards_total=j.es.n_shards, seconds=seconds,
                images_per_s=j.rows_written / seconds if j.written else 0.0,
                random_weights=j.loaded.spec.is_random,
                shards_by_others=len(j.pending_at_start) - j.written,
                skipped=sorted(skipped), precision=precision, batch_size=bs,
                recomputed_corrupt=recomputed.get(j.key.digest, [])))
        return results
    finally:
        board.close()
        for j in jobs:
            if isinstance(j.loaded, LoadedBackbone):
                j.loaded.model.to("cpu")
        dist.close()


class _ClaimedBatches:
    """Batch sampler that claims each shard just before yielding its rows.

    Model batches never cross a shard boundary and follow one layout per shard whichever
    shards were done before, so a resumed or distributed extract gives the same bits as an
    uninterrupted one. Each model batch is handed to the loader as worker batches of at most
    ``worker_batch`` rows (the main loop puts them back together). Rank r visits its own
    share of the shards (r, r + world, ...) first, then the rest, to take over what others
    have not claimed. ``owned`` tells the main loop which backbones this process computes
    for each shard it claimed.
    """

    def __init__(self, jobs: Sequence[_Job], board: ClaimBoard, dist: Distributed,
                 batch_size: int, worker_batch: int | None = None) -> None:
        self.jobs, self.board, self.batch_size = jobs, board, batch_size
        self.worker_batch = min(worker_batch or batch_size, batch_size)
        need: dict[int, list[_Job]] = {}
        for j in jobs:
            for s in j.es.pending_shards():
                need.setdefault(s, []).append(j)
        shards = sorted(need)
        mine = shards[dist.rank::dist.world]
        taken = set(mine)
        self.order = mine + [s for s in shards if s not in taken]
        self.need = need
        self.owned: dict[int, list[_Job]] = {}
        bounds = [jobs[0].es.shard_bounds(s) for s in shards]
        self.rows = sum(stop - start for start, stop in bounds)

    def _claim(self, j: _Job, shard: int) -> bool:
        """Claim a shard that is not done. Done is read again once the claim is held: a
        writer marks a shard done before it releases the claim, so a shard finished between
        the first read and the claim is seen here, and never computed twice."""
        if j.es.shard_done(shard) or not self.board.try_claim(j.claim(shard)):
            return False
        if j.es.shard_done(shard):
            self.board.release(j.claim(shard))
            return False
        return True

    def model_batch_end(self, row: int) -> int:
        """The row after the last of the model batch that ``row`` belongs to."""
        start, stop = self.jobs[0].es.shard_bounds(row // self.jobs[0].es.shard_rows)
        return min(start + ((row - start) // self.batch_size + 1) * self.batch_size, stop)

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
        es = self.jobs[0].es
        for s in self.order:
            owned = [j for j in self.need[s] if self._claim(j, s)]
            if not owned:
                continue
            self.owned[s] = owned
            views = tuple(sorted({j.view for j in owned}))
            start, stop = es.shard_bounds(s)
            for b in range(start, stop, self.batch_size):
                end = min(b + self.batch_size, stop)
                for w in range(b, end, self.worker_batch):
                    yield [(r, views) for r in range(w, min(w + self.worker_batch, end))]


def _run_pass(jobs: Sequence[_Job], dataset: ViewsDataset, paths: Sequence[PixelPath],
              board: ClaimBoard, dist: Distributed, *, batch_size: int,
              num_workers: int | None, device: torch.device, precision: str, on_error: str,
              progress: ExtractProgress | None) -> int:
    """One pass over the shards still pending for ``jobs``; returns the shards written."""
    raw_only = all(p.view.raw for p in paths)  # one indexed read serves a whole batch
    sampler = _ClaimedBatches(jobs, board, dist, batch_size,
                              None if raw_only else WORKER_BATCH)
    if not sampler.order:
        return 0
    workers = (default_workers(sampler.rows, batch_size) if num_workers is None
               else num_workers)
    if workers:  # the arrays of the shards this pass may take, read once for all workers
        dataset.share_arrays(np.concatenate([np.arange(*jobs[0].es.shard_bounds(s))
                                             for s in sampler.order]))
    encoded = frozenset(v for v, p in enumerate(paths) if p.encoded)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers,
        collate_fn=functools.partial(collate_views, lists=encoded),
        pin_memory=device.type == "cuda",
        prefetch_factor=max(2, -(-4 * batch_size // (sampler.worker_batch * workers)))
        if workers else None,
    )
    shard_rows = jobs[0].es.shard_rows
    outs: dict[tuple[int, int], list[torch.Tensor]] = {}
    errors_of: dict[int, dict[int, str]] = {}
    parts: list[tuple[dict[int, torch.Tensor | list[torch.Tensor]], torch.Tensor]] = []
    writer = ShardWriter()
    wrote = 0
    if progress:
        progress.start(" + ".join(j.loaded.alias for j in jobs), int(sampler.rows))
    try:
        with torch.inference_mode():
            for xs, rows, errors in loader:
                r0 = int(rows[0])
                shard = r0 // shard_rows
                bad = {int(r): e for r, e in zip(rows.tolist(), errors, strict=True) if e}
                _bad_rows(bad, on_error)
                errors_of.setdefault(shard, {}).update(bad)
                parts.append(({v: x if v in encoded else x.to(device, non_blocking=True)
                               for v, x in xs.items()}, rows))
                last = int(rows[-1]) + 1
                if progress:
                    progress.advance(len(rows))
                if last < sampler.model_batch_end(r0):
                    continue  # more worker batches of this model batch to come
                bad = _forward(sampler.owned[shard], parts, paths, outs, shard, device,
                               precision, dataset.manifest)
                _bad_rows(bad, on_error)
                errors_of[shard].update(bad)
                parts = []
                start, stop = jobs[0].es.shard_bounds(shard)
                if last == stop:
                    wrote += _finish_shard(sampler.owned.pop(shard), shard, start, stop,
                                           outs, errors_of.pop(shard, {}), dataset, board,
                                           writer, device)
    finally:
        try:
            writer.close()  # every shard finished before an error is still written
        finally:
            if progress:
                progress.finish()
    return wrote


def _bad_rows(bad: dict[int, str], on_error: str) -> None:
    """Under ``on_error="fail"``, one ImageReadError naming the first of the ``bad`` rows."""
    if bad and on_error == "fail":
        first = next(iter(bad.values()))
        more = f" (and {len(bad) - 1} more in this batch)" if len(bad) > 1 else ""
        raise ImageReadError(first + more)


def _forward(owned: Sequence[_Job], parts: list, paths: Sequence[PixelPath],
             outs: dict[tuple[int, int], list[torch.Tensor]], shard: int,
             device: torch.device, precision: str, manifest: Manifest) -> dict[int, str]:
    """One model batch (the worker batches in ``parts``) through each backbone that owns
    the shard: each view's pixels prepared once on the device (encoded rows decoded once
    for all the views that want them), in channels_last once for all the CNNs that want
    it. Returns {row: why} of the rows that could not be decoded on the device (each fed
    as a placeholder; the caller marks it missing)."""
    ready: dict[tuple[int, bool], torch.Tensor] = {}
    decoded: Decoded | None = None
    bad: dict[int, str] = {}
    for j in owned:
        if (j.view, False) not in ready:
            path = paths[j.view]
            if path.encoded:
                if decoded is None:  # every encoded view holds the same rows
                    decoded, at = decode_rows([r for xs, _ in parts for r in xs[j.view]],
                                              device)
                    rows = torch.cat([r for _, r in parts]).tolist()
                    bad = {rows[k]: f"id {str(manifest.ids[rows[k]])!r}: cannot decode "
                           f"{manifest.resolve(rows[k])}: {why}" for k, why in at.items()}
                x = decoded
            else:
                x = torch.cat([xs[j.view] for xs, _ in parts]) if len(parts) > 1 else (
                    parts[0][0][j.view])
            ready[(j.view, False)] = path.to_model(x)
        if j.channels_last and (j.view, True) not in ready:
            ready[(j.view, True)] = ready[(j.view, False)].contiguous(
                memory_format=torch.channels_last)
        with autocast(device, precision):
            y = j.model(ready[(j.view, j.channels_last)])
        outs.setdefault((id(j), shard), []).append(y.float())
    return bad


def _finish_shard(owned: Sequence[_Job], shard: int, start: int, stop: int,
                  outs: dict[tuple[int, int], list[torch.Tensor]], errors: dict[int, str],
                  dataset: ViewsDataset, board: ClaimBoard, writer: ShardWriter,
                  device: torch.device) -> int:
    """Hand a whole shard of each backbone that owns it to the writer thread (which writes
    it, then releases its claim); returns the shards handed over."""
    missing = np.zeros(stop - start, dtype=bool)
    reasons = {}
    for r, e in errors.items():
        missing[r - start] = True
        reasons[str(dataset.manifest.ids[r])] = e
    for j in owned:
        data = torch.cat(outs.pop((id(j), shard)))
        event = None
        if device.type == "cuda":  # copied back behind the next batches' compute
            host = torch.empty(data.shape, dtype=data.dtype, pin_memory=True)
            host.copy_(data, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            data = host
        writer.submit(lambda j=j, data=data, event=event: _write(
            j, shard, data, event, missing, reasons, board))
    return len(owned)


def _write(j: _Job, shard: int, data: torch.Tensor, event, missing: np.ndarray,
           reasons: dict[str, str], board: ClaimBoard) -> None:
    """(On the writer thread.) Write one backbone's shard if its claim is still ours, then
    release the claim."""
    if event is not None:
        event.synchronize()
    path = j.claim(shard)
    if board.still_ours(path):
        j.es.write_shard(shard, data.numpy(), missing=missing, reasons=reasons)
        j.written += 1
        j.rows_written += len(missing)
    else:  # taken over while this process stalled: the new owner writes it
        j.lost += 1
    board.release(path)
