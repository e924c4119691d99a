"""``featstore copy`` (local <-> S3, only missing shards, checked on arrival, resumable) and
``featstore export`` (npy, h5, parquet) give back exactly the stored embeddings."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import zarr

from featstore.data import load_dataset
from featstore.store import FeatureStore
from featstore.store.embedding_set import EmbeddingSet
from tests.conftest import SIZE, TINY, TINY_VIT, cli


@pytest.fixture
def source(capsys, npz_file, store_dir):
    code, out, err = cli(capsys, "extract", "--data", str(npz_file), "-b", TINY, "-b", TINY_VIT,
                         "--image-size", str(SIZE), "--store", str(store_dir), "--shard-rows",
                         "16", "--json")
    assert code == 0, err
    code, _, err = cli(capsys, "probe", "--data", str(npz_file), "--store", str(store_dir),
                       "--bootstrap", "10")
    assert code == 0, err
    return npz_file, store_dir, [r["key"] for r in json.loads(out)]


def arrays(store, manifest) -> dict[str, np.ndarray]:
    ds = FeatureStore(store).dataset(manifest)
    return {es.key: es.read() for es in ds.embedding_sets()}


def test_copy_local_to_s3_and_back(capsys, source, s3_store, tmp_path):
    data, store, keys = source
    m = load_dataset(data)
    code, out, err = cli(capsys, "copy", str(store), s3_store, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert {r["key"] for r in rows} == set(keys)
    assert all(r["status"] == "complete" and r["shards_copied"] == r["shards"] for r in rows)
    assert all(r["probe_runs_copied"] == 1 for r in rows)
    want = arrays(store, m)
    got = arrays(s3_store, m)
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    back = tmp_path / "back"
    code, out, _ = cli(capsys, "copy", s3_store, str(back), "--data", str(data), "-b",
                       keys[0][:12], "--json")
    assert code == 0 and [r["key"] for r in json.loads(out)] == [keys[0]]
    assert np.array_equal(arrays(back, m)[keys[0]], want[keys[0]])
    code, out, _ = cli(capsys, "results", "--data", str(data), "--store", str(back), "--json")
    assert code == 0 and len({r["run_id"] for r in json.loads(out)}) == 1  # runs came along
    code, out, _ = cli(capsys, "copy", str(store), s3_store, "--json")  # nothing left to copy
    assert all(r["shards_copied"] == 0 for r in json.loads(out))


def test_a_killed_copy_resumes_with_the_missing_shards_only(capsys, source, tmp_path,
                                                           monkeypatch):
    data, store, keys = source
    m = load_dataset(data)
    real = EmbeddingSet.write_shard
    calls = []

    def dies_on_the_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed between shards
        return real(self, *a, **k)

    monkeypatch.setattr(EmbeddingSet, "write_shard", dies_on_the_third)
    dst = tmp_path / "dst"
    code, _, err = cli(capsys, "copy", str(store), str(dst), "-b", keys[0][:12], "--data",
                       str(data))
    assert code == 130 and "interrupted: finished work is kept" in err  # said, not silent
    monkeypatch.setattr(EmbeddingSet, "write_shard", real)
    code, out, _ = cli(capsys, "copy", str(store), str(dst), "--data", str(data), "--json")
    rows = {r["key"]: r for r in json.loads(out)}
    assert rows[keys[0]]["shards_already_there"] == 2
    assert rows[keys[0]]["shards_copied"] == rows[keys[0]]["shards"] - 2
    want, got = arrays(store, m), arrays(dst, m)
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_a_corrupt_source_shard_is_not_copied(capsys, source, tmp_path):
    data, store, keys = source
    m = load_dataset(data)
    es = FeatureStore(store).dataset(m).embedding_set(keys[0][:12])
    arr = zarr.open_array(store / es.dataset.name / es.name / "embeddings", mode="r+")
    arr[17, 0] = arr[17, 0] + 1  # shard 1
    code, _, err = cli(capsys, "copy", str(store), str(tmp_path / "dst"), "-b", keys[0][:12],
                       "--data", str(data))
    assert code == 1 and "shard 1 (rows 16-31) fails its checksum" in err
    copied = FeatureStore(tmp_path / "dst").dataset(m).embedding_set(keys[0][:12])
    assert not copied.done_mask()[1] and copied.done_mask()[0]


@pytest.mark.parametrize("fmt", ["npy", "h5", "parquet"])
def test_export_round_trips(capsys, source, tmp_path, fmt):
    data, store, keys = source
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    emb = FeatureStore(store).dataset(load_dataset(data)).embedding_set(keys[1][:12]).load()
    out_path = tmp_path / ("out" if fmt == "npy" else f"out.{fmt}")
    code, _, err = cli(capsys, "export", "--data", str(data), "--store", str(store), "-b",
                       keys[1][:12], "--format", fmt, "-o", str(out_path))
    assert code == 0, err
    if fmt == "npy":
        X, ids = np.load(out_path / "embeddings.npy"), np.load(out_path / "ids.npy")
        labels, split = np.load(out_path / "labels.npy"), np.load(out_path / "split.npy")
        assert json.loads((out_path / "meta.json").read_text())["key"] == keys[1]
    elif fmt == "h5":
        with h5py.File(out_path) as f:
            X, labels = f["embeddings"][...], f["labels"][...]
            ids, split = f["ids"].asstr()[...], f["split"].asstr()[...]
    else:
        import pyarrow.parquet as pq

        t = pq.read_table(out_path)
        X = np.stack(t["embedding"].to_numpy(zero_copy_only=False))
        ids, split = t["id"].to_numpy(), t["split"].to_numpy()
        labels = t["label"].to_numpy()[:, None]
    assert np.array_equal(X, emb.X) and list(ids) == list(emb.ids)
    assert list(split) == list(emb.split) and np.array_equal(labels, emb.labels)


def test_export_by_group_name_without_the_data(capsys, source, tmp_path):
    data, store, keys = source
    [ds] = FeatureStore(store).datasets()
    code, _, err = cli(capsys, "export", "--data", ds.name, "--store", str(store), "-b",
                       keys[0][:12], "-o", str(tmp_path / "o"))
    assert code == 0, err
    code, _, err = cli(capsys, "export", "--data", ds.name, "--store", str(store), "-b",
                       keys[0][:12], "--format", "csv", "-o", str(tmp_path / "o"))
    assert code == 1 and "unknown export format 'csv'" in err
