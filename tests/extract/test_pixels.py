"""The data path: uint8 from the loader workers, the float work batched on the model's
device. PIL-resized rows give the bits of the per-image transform; the batched resize of
equal-sized arrays is close to PIL's on real images and keyed apart; a cache hit reads
nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from featstore.data import load_dataset, read_image
from featstore.data.arrays import uniform_array_shape
from featstore.data.images import ViewsDataset
from featstore.errors import StoreError
from featstore.extract import extract_embeddings
from featstore.extract.pixels import pixel_paths
from featstore.models import build_backbone, parse_backbone
from featstore.models.preprocessing import BATCHED_RESIZE, Preprocessing
from featstore.store import FeatureStore
from featstore.store.embedding_set import EmbeddingSet
from featstore.store.shards import ShardReader
from tests.conftest import SHARED_MEDMNIST, SIZE, TINY, TINY_VIT, cli, make_medmnist

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PREPS = [Preprocessing(224, 0.875, "bicubic", *IMAGENET),
         Preprocessing(64, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
BREAST = SHARED_MEDMNIST / "breastmnist.npz"
needs_medmnist = pytest.mark.skipif(not BREAST.exists(),
                                    reason="../shared/data/medmnist not present")


@pytest.mark.parametrize("prep", PREPS, ids=["224-bicubic", "64-bilinear"])
@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_uint8_stage_then_batched_normalise_equals_the_per_image_transform(prep, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (120, 90), dtype=np.uint16))
    else:
        shape = (150, 200, 3) if mode == "RGB" else (90, 130)
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode)
    want = prep.transform()(img)
    x = prep.pixel_stage()(img)
    assert x.dtype == torch.uint8 and x.shape == want.shape
    assert torch.equal(prep.normalize(x[None])[0], want)  # bit for bit


def test_a_file_dataset_goes_through_pil_and_keeps_its_keys(image_csv, store_dir):
    m = load_dataset(image_csv)
    [path] = pixel_paths(m, [PREPS[1]], resize="device", device_type="cuda")
    assert not path.view.raw and path.key_resize is None  # files: always PIL


def test_equal_sized_arrays_are_read_in_one_batch_as_stored(tmp_path):
    npz = make_medmnist(tmp_path / "m.npz", size=28)
    m = load_dataset(npz)
    assert uniform_array_shape(m) == (28, 28)
    [path] = pixel_paths(m, [PREPS[1]], resize="device", device_type="cpu")
    assert path.view.raw and path.key_resize == BATCHED_RESIZE  # 28 px -> 64 px resizes
    ds = ViewsDataset(m, [path.view])
    batch = ds.__getitems__([(i, (0,)) for i in (5, 3, 40, 41)])
    for k, i in enumerate((5, 3, 40, 41)):
        want = np.asarray(read_image(m, i).convert("L"))
        assert np.array_equal(batch.xs[0][k].numpy(), want)
    assert batch.rows.tolist() == [5, 3, 40, 41] and batch.errors == [""] * 4


def test_arrays_at_the_backbone_size_go_unresized_bit_for_bit(tmp_path, store_dir):
    spec = parse_backbone(TINY, input_size=SIZE)
    prep = build_backbone(spec).preprocessing
    m = load_dataset(make_medmnist(tmp_path / "m.npz", size=prep.resize))  # crops, no resize
    [path] = pixel_paths(m, [prep], resize="device", device_type="cpu")
    assert path.view.raw and path.key_resize is None  # no resize: PIL's bits, PIL's key
    kw = {"batch_size": 8, "shard_rows": 16, "num_workers": 0}
    a = extract_embeddings(m, [spec], FeatureStore(tmp_path / "a"), resize="device", **kw)
    b = extract_embeddings(m, [spec], FeatureStore(tmp_path / "b"), resize="cpu", **kw)
    assert a[0].key == b[0].key
    xa = FeatureStore(tmp_path / "a").load(m, a[0].key).X
    assert np.array_equal(xa, FeatureStore(tmp_path / "b").load(m, b[0].key).X)


@needs_medmnist
@pytest.mark.parametrize("prep", PREPS, ids=["224-bicubic", "64-bilinear"])
def test_batched_resize_is_close_to_pil_on_real_images(prep):
    m = load_dataset(BREAST)
    rows = np.arange(0, len(m), 13)
    pil = torch.stack([prep.pixel_stage()(read_image(m, int(i))) for i in rows])
    with np.load(BREAST) as z:
        stored = np.concatenate([z["train_images"], z["val_images"], z["test_images"]])
    order = {("train_images", j): j for j in range(546)}
    order.update({("val_images", j): 546 + j for j in range(78)})
    order.update({("test_images", j): 624 + j for j in range(156)})
    arr = torch.from_numpy(stored[[order[(m.array_keys[i], int(m.index[i]))] for i in rows]])
    batched = prep.resize_batch(arr)
    assert batched.shape == pil.shape and batched.dtype == torch.uint8
    diff = (batched.int() - pil.int()).abs()
    assert (diff > 0).float().mean() < 1e-4 and diff.max() <= 1  # PIL's kernels and passes
    a, b = prep.normalize(batched).flatten(1), prep.normalize(pil).flatten(1)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999


@needs_medmnist
def test_device_resize_embeddings_match_pil_and_are_keyed_apart(capsys, tmp_path):
    data = ["--data", str(BREAST), "--store", str(tmp_path / "s")]
    keys, sets = {}, {}
    for resize in ("cpu", "device"):
        code, out, err = cli(capsys, "extract", *data, "-b", "timm:resnet18@random",
                             "--image-size", "64", "--resize", resize, "--json")
        assert code == 0, err
        keys[resize] = json.loads(out)[0]["key"]
    assert keys["cpu"] != keys["device"]
    ds = FeatureStore(tmp_path / "s").dataset(load_dataset(BREAST))
    for resize, key in keys.items():
        sets[resize] = ds.embedding_set(key)
    assert sets["device"].attrs["key_fields"]["resize"] == BATCHED_RESIZE
    assert "resize" not in sets["cpu"].attrs["key_fields"]
    assert sets["device"].attrs["provenance"]["resize"].startswith("batched on the device")
    a, b = (torch.from_numpy(sets[r].read()) for r in ("cpu", "device"))
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999


def test_a_set_resized_on_the_device_is_found_by_its_spec(capsys, tmp_path):
    npz = make_medmnist(tmp_path / "m.npz", size=28)
    data = ["--data", str(npz), "--store", str(tmp_path / "s")]
    code, out, err = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE),
                         "--resize", "device", "--json")
    assert code == 0, err
    key = json.loads(out)[0]["key"]
    code, out, err = cli(capsys, "probe", *data, "-b", TINY, "--image-size", str(SIZE),
                         "--bootstrap", "0", "--json")
    assert code == 0 and json.loads(out)[0]["key"] == key, err


def test_worker_batches_make_the_same_model_batches(tmp_path, image_csv, monkeypatch):
    import featstore.extract.engine as engine

    m = load_dataset(image_csv)
    specs = [parse_backbone(b, input_size=SIZE) for b in (TINY, TINY_VIT)]
    kw = {"batch_size": 24, "shard_rows": 40}
    whole = extract_embeddings(m, specs, FeatureStore(tmp_path / "a"), num_workers=0, **kw)
    monkeypatch.setattr(engine, "WORKER_BATCH", 5)  # 24 = 5+5+5+5+4; shards end mid-batch
    parts = extract_embeddings(m, specs, FeatureStore(tmp_path / "b"), num_workers=2, **kw)
    for a, b in zip(whole, parts, strict=True):
        assert a.key == b.key
        xa = FeatureStore(tmp_path / "a").load(m, a.key).X
        assert np.array_equal(xa, FeatureStore(tmp_path / "b").load(m, b.key).X)


def test_a_cache_hit_reads_no_shard(capsys, npz_file, store_dir, monkeypatch):
    data = ["--data", str(npz_file), "--store", str(store_dir), "-b", TINY, "--image-size",
            str(SIZE)]
    code, _, err = cli(capsys, "extract", *data)
    assert code == 0, err

    def no_reads(self, *a, **k):
        raise AssertionError("a cache hit read a shard")

    monkeypatch.setattr(ShardReader, "_read", no_reads)
    monkeypatch.setattr(EmbeddingSet, "verify", no_reads)
    code, out, err = cli(capsys, "extract", *data)
    assert code == 0 and "cache hit" in out, err


def test_a_write_error_stops_the_pass_and_keeps_finished_shards(image_csv, tmp_path,
                                                                monkeypatch):
    m = load_dataset(image_csv)
    fs = FeatureStore(tmp_path / "s")
    real, calls = EmbeddingSet.write_shard, []

    def full_disk_on_the_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(EmbeddingSet, "write_shard", full_disk_on_the_third)
    spec = parse_backbone(TINY, input_size=SIZE)
    with pytest.raises(StoreError, match="no space left on device .* 2 finished shards are kept"):
        extract_embeddings(m, [spec], fs, batch_size=8, shard_rows=16, num_workers=0)
    es = fs.dataset(m).embedding_sets()[0]
    assert es.done_mask().tolist()[:2] == [True, True] and not es.complete
    monkeypatch.setattr(EmbeddingSet, "write_shard", real)
    [res] = extract_embeddings(m, [spec], fs, batch_size=8, shard_rows=16, num_workers=0)
    assert res.status == "resumed" and res.shards_written == res.shards_total - 2


def test_a_pipeline_extracted_with_the_device_resize_plans_as_cached(capsys, tmp_path):
    from featstore.pipeline import load_pipeline
    from featstore.pipeline.plan import plan_pipeline

    make_medmnist(tmp_path / "alpha.npz", size=28)
    toml = tmp_path / "p.toml"
    toml.write_text(f"""
name = "resized"
store = "{tmp_path / 'store'}"
fractions = [1.0]
seeds = 1
bootstrap = 10

[datasets]
alpha = "{tmp_path / 'alpha.npz'}"

[backbones]
resnet = {{ spec = "{TINY}", image_size = {SIZE} }}

[extract]
device = "cpu"
workers = 0
resize = "device"

[probe]
probes = ["linear"]
""")
    code, out, err = cli(capsys, "run", str(toml), "--json")
    assert code == 0, err
    [es] = FeatureStore(tmp_path / "store").datasets()[0].embedding_sets()
    assert es.attrs["key_fields"]["resize"] == BATCHED_RESIZE
    plan = plan_pipeline(load_pipeline(toml))
    assert [s.cached for s in plan.steps] == [True, True], [s.id for s in plan.steps]
    code, out, err = cli(capsys, "extract", "--data", str(tmp_path / "alpha.npz"), "--store",
                         str(tmp_path / "store"), "-b", TINY, "--image-size", str(SIZE),
                         "--json")  # auto on a CPU: the finished device-resized set is reused
    assert code == 0 and json.loads(out)[0]["key"] == es.key, err
    assert json.loads(out)[0]["status"] == "cached"


def test_an_unfinished_set_gives_way_to_a_finished_one_made_the_other_way(capsys, tmp_path,
                                                                        monkeypatch):
    """A PIL set left unfinished (an interrupted CPU run) beside a finished set resized on
    a GPU: the extract is a cache hit on the finished one, and what reads by spec (probe,
    a pipeline's probe step) reads that one too, not the unfinished one."""
    from featstore.pipeline import load_pipeline
    from featstore.pipeline.plan import plan_pipeline

    npz = make_medmnist(tmp_path / "m.npz", size=28)
    m = load_dataset(npz)
    fs = FeatureStore(tmp_path / "s")
    spec = parse_backbone(TINY, input_size=SIZE)
    [gpu] = extract_embeddings(m, [spec], fs, resize="device", shard_rows=16, num_workers=0)
    real, calls = EmbeddingSet.write_shard, []

    def fail_after_one(self, *a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(EmbeddingSet, "write_shard", fail_after_one)
    with pytest.raises(StoreError, match="no space left"):
        extract_embeddings(m, [spec], fs, resize="cpu", shard_rows=16, num_workers=0)
    monkeypatch.setattr(EmbeddingSet, "write_shard", real)
    [hit] = extract_embeddings(m, [spec], fs, num_workers=0)  # --resize auto
    assert (hit.key, hit.status) == (gpu.key, "cached")
    data = ["--data", str(npz), "--store", str(tmp_path / "s")]
    code, out, err = cli(capsys, "probe", *data, "-b", TINY, "--image-size", str(SIZE),
                         "--bootstrap", "0", "--json")
    assert code == 0 and json.loads(out)[0]["key"] == gpu.key, err
    toml = tmp_path / "p.toml"
    toml.write_text(f"""
store = "{tmp_path / 's'}"
fractions = [0.5]
seeds = 1
bootstrap = 10
[datasets]
m = "{npz}"
[backbones]
resnet = {{ spec = "{TINY}", image_size = {SIZE} }}
[extract]
device = "cpu"
workers = 0
[probe]
probes = ["linear"]
""")
    assert [s.cached for s in plan_pipeline(load_pipeline(toml)).steps] == [True, False]
    code, out, err = cli(capsys, "run", str(toml), "--json")
    assert code == 0, err
    assert FeatureStore(tmp_path / "s").dataset(m).embedding_set(gpu.key).probe_runs.by_id()
