"""Reading an embedding set's shards.

Shards written by featstore (zarr's sharding codec, uncompressed little-endian chunks, the
index at the end) are read as bytes straight into the caller's array: one read or one GET
per shard, no per-chunk decoding. The shard index is checked first (every chunk present,
in order, whole); anything else goes through zarr. Where the bytes come from is a
:class:`ShardBytes`: a file of a local store, or a GET through the zarr store; the local
shard cache (``--cache``) is a wrapper around a reader, :class:`CachedShardReader`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import zarr

from featstore._hashing import array_sha256
from featstore.store.backend import local_root
from featstore.store.cache import ShardCache


def plain_layout(array: zarr.Array, dim: int, shard_rows: int) -> tuple[int, int] | None:
    """(chunk rows, index bytes) when the array's shards can be read as plain bytes; None
    for any other encoding (then zarr decodes)."""
    codecs = array.metadata.to_dict().get("codecs") or []
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = codecs[0].get("configuration", {})
    inner = [c.get("name") for c in conf.get("codecs", [])]
    index = [c.get("name") for c in conf.get("index_codecs", [])]
    chunk = tuple(conf.get("chunk_shape", ()))
    if (inner != ["bytes"] or index != ["bytes", "crc32c"] or sys.byteorder != "little"
            or conf.get("index_location", "end") != "end" or len(chunk) != 2
            or chunk[1] != dim or shard_rows % chunk[0]
            or any(c.get("configuration", {}).get("endian", "little") != "little"
                   for c in conf.get("codecs", []))):
        return None
    return chunk[0], (shard_rows // chunk[0]) * 16 + 4


def plain_index(index: bytes, n_chunks: int, chunk_bytes: int) -> bool:
    """Whether a shard index (uint64 offset, nbytes per chunk, then a crc32c) says the first
    ``n_chunks`` chunks are stored whole, in order, back to back from offset 0."""
    pairs = np.frombuffer(index[:-4], dtype="<u8").reshape(-1, 2)
    want = np.arange(n_chunks, dtype=np.uint64) * np.uint64(chunk_bytes)
    return bool((pairs[:n_chunks, 0] == want).all()
                and (pairs[:n_chunks, 1] == chunk_bytes).all())


class ShardBytes:
    """A shard object's bytes through the zarr store (one GET)."""

    def __init__(self, zstore: zarr.abc.store.Store) -> None:
        self.zstore = zstore

    def read_into(self, key: str, target: np.ndarray, index_bytes: int,
                  n_chunks: int, chunk_bytes: int) -> bool:
        """Fill ``target`` (uint8) with the shard's data when its index is the plain layout;
        False otherwise. FileNotFoundError when the object is gone."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self.zstore.get(key, prototype=default_buffer_prototype()))
        if buf is None:
            raise FileNotFoundError(key)
        raw = buf.as_numpy_array()
        data_bytes = n_chunks * chunk_bytes
        if len(raw) != data_bytes + index_bytes or not plain_index(
                raw[data_bytes:].tobytes(), n_chunks, chunk_bytes):
            return False
        target[...] = raw[:target.nbytes]
        return True


class LocalShardBytes(ShardBytes):
    """A shard object of a local store: one file, its index read first, then the data."""

    def read_into(self, key: str, target: np.ndarray, index_bytes: int,
                  n_chunks: int, chunk_bytes: int) -> bool:
        with open(local_root(self.zstore) / key, "rb") as f:
            size = f.seek(0, 2)
            if size != n_chunks * chunk_bytes + index_bytes:
                return False
            f.seek(size - index_bytes)
            if not plain_index(f.read(index_bytes), n_chunks, chunk_bytes):
                return False
            f.seek(0)
            return f.readinto(target) == target.nbytes


def shard_bytes(zstore: zarr.abc.store.Store) -> ShardBytes:
    return LocalShardBytes(zstore) if local_root(zstore) is not None else ShardBytes(zstore)


class ShardReader:
    """Reads the shards of one embeddings array (rows ``rows``, ``shard_rows`` a shard)."""

    needs_checksums = False  # whether a read needs each shard's checksum even unverified

    def __init__(self, array: zarr.Array, zstore: zarr.abc.store.Store, *, rows: int,
                 dim: int, shard_rows: int) -> None:
        self.array = array
        self.rows, self.dim, self.shard_rows = rows, dim, shard_rows
        self.layout = plain_layout(array, dim, shard_rows)
        self.source = shard_bytes(zstore)

    def bounds(self, shard: int) -> tuple[int, int]:
        """Row range [start, stop) of one shard."""
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.rows)

    def load(self, shard: int, out: np.ndarray, want: bytes | None = None,
             verify: bool = True) -> str | None:
        """Read one shard's rows into ``out``; checked against ``want`` (its sha256) when
        given. The reason when it cannot be read or fails the check, else None."""
        error = self._read(shard, out)
        if error:
            return error
        if want is not None and array_sha256(out) != want:
            return "fails its checksum"
        return None

    def _read(self, shard: int, out: np.ndarray) -> str | None:
        arr = self.array
        if self.layout is not None:
            chunk_rows, index_bytes = self.layout
            key = f"{arr.path}/{arr.metadata.encode_chunk_key((shard, 0))}"
            n_chunks = -(-len(out) // chunk_rows)
            try:
                if self.source.read_into(key, out.reshape(-1).view(np.uint8), index_bytes,
                                         n_chunks, chunk_rows * self.dim * out.itemsize):
                    return None
            except FileNotFoundError:
                return "is missing (its shard file was deleted)"
        start, stop = self.bounds(shard)
        try:
            out[...] = arr[start:stop]
        except Exception as e:  # zarr/numcodecs raise assorted errors on damaged bytes
            return f"cannot be read ({e.__class__.__name__})"
        return None


class CachedShardReader:
    """A reader whose shards are kept in a local :class:`ShardCache` by checksum: a cached
    shard is read from disk (checked again when ``verify``), a fetched one enters the cache
    once it matched its checksum, and a damaged cache file is dropped and fetched again."""

    needs_checksums = True  # the cache is keyed by them

    def __init__(self, reader: ShardReader, cache: ShardCache) -> None:
        self.reader, self.cache = reader, cache

    def bounds(self, shard: int) -> tuple[int, int]:
        return self.reader.bounds(shard)

    def load(self, shard: int, out: np.ndarray, want: bytes | None = None,
             verify: bool = True) -> str | None:
        if want is None:
            return self.reader.load(shard, out)
        if self.cache.read_into(want, out):
            if not verify or array_sha256(out) == want:  # (checked when it entered)
                return None
            self.cache.drop(want)
        error = self.reader.load(shard, out, want)
        if error is None:
            self.cache.put(want, out)
        return error


def parallel(fn: Any, items: Any) -> list[Any]:
    """``fn`` over ``items`` in a few threads (file reads and sha256 release the GIL)."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
