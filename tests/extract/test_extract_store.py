"""Extract into the Zarr store: round trip, keys, resume, cache hits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import zarr

import featstore.extract.engine as engine
from featstore.data import load_dataset
from featstore.errors import ImageReadError, ManifestError, NotExtractedError, StoreError
from featstore.extract import extract_embeddings, resolve_key
from featstore.models import build_backbone, parse_backbone
from featstore.store import FeatureStore
from tests.conftest import SIZE, TINY, TINY_VIT


def tiny(text: str = TINY):
    return parse_backbone(text, input_size=SIZE)


def run(manifest, store, specs=None, **kw):
    kw.setdefault("batch_size", 8)
    kw.setdefault("shard_rows", 16)
    kw.setdefault("num_workers", 0)
    return extract_embeddings(manifest, specs or [tiny()], store, **kw)


def test_round_trip_rows_align_with_manifest(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [res] = run(m, fs)
    assert res.status == "extracted" and res.shards_total == 4 and res.random_weights
    emb = fs.load(m, res.key)
    assert emb.X.shape == (64, res.dim) and emb.X.dtype == np.float32
    assert emb.ids.tolist() == m.ids.tolist()
    assert emb.split.tolist() == m.split.tolist()
    assert np.array_equal(emb.labels, m.labels)
    # the stored rows are the backbone's embeddings of exactly those images
    loaded = build_backbone(tiny())
    tf = loaded.preprocessing.transform()
    from featstore.data import read_image

    x = torch.stack([tf(read_image(m, i)) for i in (0, 37)])
    np.testing.assert_allclose(emb.X[[0, 37]], loaded.embed(x).numpy(), rtol=1e-4, atol=1e-5)


def test_store_layout_and_provenance(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [res] = run(m, fs)
    root = zarr.open_group(store_dir, mode="r")
    g = root[m.group_name]
    assert g.attrs["manifest_sha256"] == m.sha256
    es = g[res.key[:20]]
    assert es["embeddings"].shards == (16, res.dim)
    assert es["done"][...].tolist() == [1, 1, 1, 1]
    prov = es.attrs["provenance"]
    assert prov["random_weights"] is True and prov["weights"].startswith("random")
    assert set(prov["versions"]) == {"featstore", "torch", "timm", "zarr"}
    assert es.attrs["status"] == "complete" and es.attrs["alias"].endswith("@random")
    assert fs.dataset(m).embedding_set(res.key).verify() == []


def test_float16_storage(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [a] = run(m, fs)
    [b] = run(m, fs, dtype="float16")
    assert a.key != b.key
    x16 = fs.load(m, b.key).X
    assert x16.dtype == np.float16
    np.testing.assert_allclose(x16, fs.load(m, a.key).X, rtol=2e-3, atol=2e-3)


def test_key_changes_with_weights_preprocessing_and_dtype(tmp_path):
    base = resolve_key(tiny())[1].digest
    assert resolve_key(tiny())[1].digest == base  # same inputs -> same key
    assert resolve_key(parse_backbone(TINY, input_size=48))[1].digest != base
    assert resolve_key(tiny(), "float16")[1].digest != base
    model = timm.create_model("test_resnet", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "a.pth")
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    torch.save(model.state_dict(), tmp_path / "b.pth")
    ka = resolve_key(parse_backbone(f"timm:test_resnet@{tmp_path / 'a.pth'}", input_size=SIZE))
    kb = resolve_key(parse_backbone(f"timm:test_resnet@{tmp_path / 'b.pth'}", input_size=SIZE))
    assert len({ka[1].digest, kb[1].digest, base}) == 3


def test_changed_manifest_is_a_new_dataset_never_a_silent_reuse(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    run(m, fs)
    text = image_csv.read_text().replace("test-0001,test,images/test/test-0001.png,1",
                                         "test-0001,test,images/test/test-0001.png,0")
    changed = image_csv.parent / "demo2.csv"
    changed.write_text(text)
    with pytest.raises(NotExtractedError, match="not in store"):
        fs.dataset(load_dataset(changed))


def test_interrupted_extract_resumes_to_identical_array(image_csv, tmp_path, monkeypatch):
    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    [full] = run(m, ref)
    fs = FeatureStore(tmp_path / "resumed")
    real_write = engine.EmbeddingSet.write_shard
    calls = []

    def write_then_die(self, shard, data, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(shard)
        real_write(self, shard, data, **kw)

    monkeypatch.setattr(engine.EmbeddingSet, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(m, fs)
    es = fs.dataset(m).embedding_set(full.key)
    assert es.done_mask().tolist() == [True, True, False, False]
    with pytest.raises(NotExtractedError, match="2 of 4 shards not done"):
        es.read()
    monkeypatch.setattr(engine.EmbeddingSet, "write_shard", real_write)
    [res] = run(m, fs)
    assert res.status == "resumed" and res.shards_written == 2
    assert np.array_equal(fs.load(m, full.key).X, ref.load(m, full.key).X)


def test_finished_extract_rerun_is_a_cache_hit_without_model_work(image_csv, store_dir,
                                                                  monkeypatch):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [first] = run(m, fs)
    before = fs.load(m, first.key).X

    def no_forward(*a, **k):
        raise AssertionError("a cached extract ran the model")

    monkeypatch.setattr(engine, "_run_pass", no_forward)
    [again] = run(m, fs)
    assert again.status == "cached" and again.shards_written == 0
    assert np.array_equal(fs.load(m, first.key).X, before)


def test_two_backbones_and_workers(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    res = run(m, fs, specs=[tiny(), tiny(TINY_VIT)], num_workers=2)
    assert [r.status for r in res] == ["extracted", "extracted"]
    assert {s.alias for s in fs.dataset(m).embedding_sets()} == {r.alias for r in res}
    ref = FeatureStore(store_dir.parent / "ref")
    [single] = run(m, ref, specs=[tiny(TINY_VIT)], num_workers=0)
    assert np.array_equal(fs.load(m, single.key).X, ref.load(m, single.key).X)


def test_corrupt_image_names_the_row_and_keeps_finished_shards(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [good] = run(m, fs, specs=[tiny(TINY_VIT)])
    # corrupt one image that sorts into the third shard, then extract another backbone
    victim = m.ids[40]
    (image_csv.parent / m.paths[40]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match=f"id '{victim}'"):
        run(m, fs)
    es = next(s for s in fs.dataset(m).embedding_sets() if s.key != good.key)
    assert es.done_mask().tolist() == [True, True, False, False]
    assert fs.load(m, good.key).X.shape == (64, good.dim)  # earlier cache intact
    assert fs.dataset(m).embedding_set(good.key).verify() == []


def test_missing_file_fails_before_any_work(image_csv, store_dir):
    m = load_dataset(image_csv)
    (image_csv.parent / m.paths[5]).unlink()
    with pytest.raises(ManifestError, match=f"id '{m.ids[5]}'.*file not found"):
        run(m, FeatureStore(store_dir))
    assert FeatureStore(store_dir).datasets() == []


def test_verify_detects_a_corrupted_shard(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [res] = run(m, fs)
    arr = zarr.open_array(store_dir / m.group_name / res.key[:20] / "embeddings", mode="r+")
    arr[20, 0] = arr[20, 0] + 1.0
    assert fs.dataset(m).embedding_set(res.key).verify() == [1]


def test_non_finite_embeddings_are_never_cached(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [res] = run(m, fs)
    es = fs.dataset(m).embedding_set(res.key)
    bad = np.ones((16, res.dim), np.float32)
    bad[3, 0] = np.nan
    with pytest.raises(StoreError, match=f"non-finite embedding at row 3 \\(id '{m.ids[3]}'\\)"):
        es.write_shard(0, bad)
    assert es.verify() == []


def test_store_on_an_fsspec_url(image_csv):
    m = load_dataset(image_csv)
    fs = FeatureStore("memory://featstore-test")
    [res] = run(m, fs)
    assert fs.load(m, res.key).X.shape == (64, res.dim)
    assert [d.name for d in FeatureStore("memory://featstore-test").datasets()] == [m.group_name]


def test_alias_lookup_is_ambiguous_across_sizes(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    run(m, fs)
    [other] = run(m, fs, specs=[parse_backbone(TINY, input_size=48)])
    ds = fs.dataset(m)
    assert ds.embedding_set(other.alias).key == other.key
    with pytest.raises(NotExtractedError, match="no embeddings for 'nope'"):
        ds.embedding_set("nope")
    assert json.dumps(ds.attrs)  # attrs are plain JSON


def test_npz_dataset_extracts(npz_file: Path, store_dir):
    m = load_dataset(npz_file)
    fs = FeatureStore(store_dir)
    [res] = run(m, fs, num_workers=2)
    assert fs.load(m, res.key).X.shape == (68, res.dim)


def test_a_full_disk_is_one_error_keeping_finished_shards_and_resumes_identically(
        capsys, npz_file, tmp_path, monkeypatch):
    """The disk fills up while shard 2 of 5 is written: one error saying so, where, and
    what is kept; once there is space, the same command finishes the set, bit for bit as
    an uninterrupted extract."""
    import errno
    import re

    import zarr.storage._local as local

    from tests.conftest import cli

    args = ["extract", "--data", str(npz_file), "-b", TINY, "--image-size", str(SIZE),
            "--shard-rows", "16", "--store"]
    assert cli(capsys, *args, str(tmp_path / "ref"))[0] == 0
    real_put = local._put

    def put(path, value, exclusive=False):  # zarr's write of one object to a file
        shard = re.search(r"/embeddings/c/(\d+)/", str(path))
        if shard and int(shard[1]) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", put)
    store = tmp_path / "full"
    code, _, err = cli(capsys, *args, str(store))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, err
    assert "internal" not in err and "Traceback" not in err
    assert errors[0].startswith(f"error: no space left on device writing {store}/"), err
    assert ("the 2 finished shards are kept" in errors[0]
            and errors[0].endswith("free space and run the same command to resume")), err
    [es] = FeatureStore(store).datasets()[0].embedding_sets()
    assert es.done_mask().tolist() == [True, True, False, False, False]
    monkeypatch.setattr(local, "_put", real_put)
    code, out, _ = cli(capsys, *args, str(store))
    assert code == 0 and "resumed: 3/5 shards written" in out, out
    [ref] = FeatureStore(tmp_path / "ref").datasets()[0].embedding_sets()
    assert es.key == ref.key and es.read().tobytes() == ref.read().tobytes()
