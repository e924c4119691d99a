"""The read path: shards written by featstore are read as bytes straight into the output (no
per-chunk decoding), and give exactly what zarr decodes; anything else goes through zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from featstore.data.manifest import build_manifest
from featstore.errors import CorruptShardError
from featstore.store import EmbeddingKey, FeatureStore


def make_set(tmp_path, rows=100, dim=12, dtype="float16", shard_rows=32, chunk_rows=8,
             store=None):
    (tmp_path / "x.bin").write_bytes(b"x")
    m = build_manifest("t", {"id": [f"r{i:03d}" for i in range(rows)],
                             "split": ["train"] * rows, "path": ["x.bin"] * rows,
                             "label": [str(i % 2) for i in range(rows)]}, root=tmp_path)
    fs = FeatureStore(store or tmp_path / "store")
    es = fs.dataset(m, create=True).create_embedding_set(
        EmbeddingKey({"t": 1}), dim=dim, dtype=dtype, alias="t", provenance={},
        shard_rows=shard_rows, chunk_rows=chunk_rows)
    X = np.random.default_rng(0).normal(size=(rows, dim)).astype(dtype)
    for shard in range(es.n_shards):
        start, stop = es.shard_bounds(shard)
        es.write_shard(shard, X[start:stop])
    return fs, m, es, X


@pytest.mark.parametrize(("dtype", "where"), [("float16", "local"), ("float32", "local"),
                                              ("float16", "s3")])
def test_direct_read_equals_zarr_and_never_decodes_chunks(tmp_path, monkeypatch, request,
                                                          dtype, where):
    store = request.getfixturevalue("s3_store") if where == "s3" else None
    fs, m, es, X = make_set(tmp_path, dtype=dtype, store=store)  # the last shard is partial
    assert es.reader.layout is not None
    zarr_view = es.group["embeddings"][...]

    def no_decoding(self, sel):
        if self.path.endswith("/embeddings"):
            raise AssertionError("decoded through zarr")
        return real(self, sel)

    real = zarr.Array.__getitem__
    monkeypatch.setattr(zarr.Array, "__getitem__", no_decoding)
    got = fs.dataset(m).embedding_set("t").read()
    assert got.dtype == X.dtype and np.array_equal(got, X) and np.array_equal(got, zarr_view)


def test_a_shard_with_another_layout_is_decoded_by_zarr(tmp_path):
    fs, m, es, X = make_set(tmp_path)
    path = tmp_path / "store" / es.dataset.name / es.name / "embeddings" / "c" / "1" / "0"
    raw = bytearray(path.read_bytes())
    index_at = len(raw) - es.reader.layout[1]
    pairs = np.frombuffer(bytes(raw[index_at:-4]), dtype="<u8").reshape(-1, 2).copy()
    pairs[[0, 1]] = pairs[[1, 0]]  # chunks 0 and 1 swapped in the index only
    raw[index_at:-4] = pairs.tobytes()
    path.write_bytes(bytes(raw))  # the crc32c of the index no longer matches: zarr refuses
    with pytest.raises(CorruptShardError, match="shard 1 .* cannot be read"):
        fs.dataset(m).embedding_set("t").read(verify=False)


def test_a_deleted_shard_file_is_named_not_read_as_zeros(tmp_path):
    fs, m, es, X = make_set(tmp_path)
    (tmp_path / "store" / es.dataset.name / es.name / "embeddings" / "c" / "2" / "0").unlink()
    with pytest.raises(CorruptShardError, match="shard 2 .*is missing"):
        fs.dataset(m).embedding_set("t").read(verify=False)
    assert fs.dataset(m).embedding_set("t").verify() == [2]


def test_a_remote_set_is_read_from_the_local_cache_the_second_time(tmp_path, s3_store,
                                                                   monkeypatch):
    from featstore.store.shards import ShardReader

    _, m, es, X = make_set(tmp_path, store=s3_store)
    cache = tmp_path / "cache"
    first = FeatureStore(s3_store, cache=cache).dataset(m).embedding_set("t")
    assert np.array_equal(first.read(), X)
    files = sorted(cache.rglob("*.bin"))
    assert len(files) == es.n_shards  # every shard, verified on arrival

    def offline(self, shard, out):
        raise AssertionError("read a shard from the store")

    with monkeypatch.context() as mp:
        mp.setattr(ShardReader, "_read", offline)
        for verify in (True, False):
            again = FeatureStore(s3_store, cache=cache).dataset(m).embedding_set("t")
            assert np.array_equal(again.read(verify=verify), X)
    files[0].write_bytes(b"\0" * files[0].stat().st_size)  # a damaged cache file
    healed = FeatureStore(s3_store, cache=cache).dataset(m).embedding_set("t")
    assert np.array_equal(healed.read(), X)  # refetched, not believed
    assert files[0].read_bytes() != b"\0" * files[0].stat().st_size


def test_a_cache_is_ignored_for_a_local_store(tmp_path):
    _, m, es, X = make_set(tmp_path)
    local = FeatureStore(tmp_path / "store", cache=tmp_path / "cache")
    assert local.cache is None
    assert np.array_equal(local.dataset(m).embedding_set("t").read(), X)
    assert not (tmp_path / "cache").exists()


def test_a_complete_set_is_read_without_its_per_shard_arrays(tmp_path, monkeypatch):
    """Sealed at completion: done marks, checksums and missing rows are in the set's attrs,
    so a read costs no request per shard for them (on S3 each would be a GET)."""
    fs, m, es, X = make_set(tmp_path)
    es.mark_complete()
    real = zarr.Array.__getitem__

    def no_per_shard_arrays(self, sel):
        if self.path.rsplit("/", 1)[-1] in ("done", "checksums", "missing"):
            raise AssertionError(f"read {self.path}")
        return real(self, sel)

    monkeypatch.setattr(zarr.Array, "__getitem__", no_per_shard_arrays)
    again = fs.dataset(m).embedding_set("t")
    assert np.array_equal(again.load().X, X)
    monkeypatch.setattr(zarr.Array, "__getitem__", real)
    arr = zarr.open_array(tmp_path / "store" / es.dataset.name / es.name / "embeddings",
                          mode="r+")
    arr[40, 0] = arr[40, 0] + 1
    with pytest.raises(CorruptShardError, match="shard 1 "):  # the sealed checksums check it
        fs.dataset(m).embedding_set("t").read()
    assert again.verify() == [1]
    again.invalidate([1])  # repair unseals: the set is read from its arrays again
    fresh = fs.dataset(m).embedding_set("t")
    assert fresh._sealed is None and fresh.pending_shards() == [1]
