"""``--decode device``: workers hand over a JPEG's bytes, the model's side decodes them in
batches (torchvision's decode_jpeg; nvJPEG on CUDA, libjpeg-turbo here on the CPU) and resizes
every row in batches. Its sets are keyed apart from PIL's, close to them on real images, and
a file that cannot be decoded there is named like any unreadable image."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featstore.data import load_dataset
from featstore.data.decode import read_encoded, to_rgb
from featstore.extract import extract_embeddings
from featstore.extract.keys import DECODE, DEVICE_DECODES
from featstore.extract.pixels import decode_rows, pixel_paths
from featstore.models import parse_backbone
from featstore.models.preprocessing import BATCHED_RESIZE
from featstore.store import FeatureStore
from tests.conftest import SHARED_MEDMNIST, SIZE, TINY, cli, make_medmnist

BREAST = SHARED_MEDMNIST / "breastmnist.npz"
CPU = torch.device("cpu")


def write_images(folder: Path, images: dict[str, Image.Image], **save) -> Path:
    """Each image saved under its file name, with a manifest CSV (half train, half test)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split", "path", "label"])
        for k, (name, img) in enumerate(images.items()):
            img.save(folder / name, **save)
            w.writerow([Path(name).stem, "train" if k % 2 else "test", name, k // 2 % 2])
    return folder / "m.csv"


def textured(rng, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A smooth gradient with noise: compresses like a photo, not like pure noise."""
    w, h = size
    base = np.add.outer(np.linspace(0, 180, h), np.linspace(0, 60, w))[..., None]
    px = base + rng.normal(0, 12, (h, w, 3)) + rng.integers(0, 40, 3)
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).convert(mode)


def jpeg_dataset(folder: Path, n: int = 24, seed: int = 0) -> Path:
    """``n`` JPEGs of a few sizes, grey and RGB, with a learnable label."""
    rng = np.random.default_rng(seed)
    sizes = [(50, 40), (40, 50), (64, 48)]
    return write_images(folder, {f"{i:03d}.jpeg": textured(rng, sizes[i % 3],
                                                           "L" if i % 4 == 3 else "RGB")
                                 for i in range(n)}, quality=90)


def decode_device_pipeline(tmp: Path, store: Path, data: Path) -> Path:
    """A pipeline file: one tiny backbone over ``data``, extracted with ``decode =
    "device"`` on the CPU, probed linearly at fraction 1."""
    toml = tmp / "p.toml"
    toml.write_text(f"""
store = "{store}"
fractions = [1.0]
seeds = 1
bootstrap = 10
[datasets]
jpegs = "{data}"
[backbones]
resnet = {{ spec = "{TINY}", image_size = {SIZE} }}
[extract]
device = "cpu"
workers = 0
decode = "device"
[probe]
probes = ["linear"]
""")
    return toml


def test_rows_decoded_on_the_device_equal_pil_s_full_decode(tmp_path):
    rng = np.random.default_rng(1)
    images = {"rgb.jpeg": textured(rng, (48, 40)), "grey.jpeg": textured(rng, (40, 48), "L"),
              "cmyk.jpeg": textured(rng, (30, 20), "CMYK"),
              "grey-png.png": textured(rng, (20, 30), "L"),
              "rgba.png": textured(rng, (20, 30), "RGBA")}
    m = load_dataset(write_images(tmp_path, images))
    rows = [torch.from_numpy(read_encoded(m, i)) for i in range(len(m))]
    by_name = {Path(m.paths[i]).name: rows[i] for i in range(len(m))}
    # RGB and grey JPEGs travel as their bytes; CMYK (decoded by PIL) and PNGs as pixels
    assert by_name["rgb.jpeg"].ndim == 1 and by_name["grey.jpeg"].ndim == 1
    assert by_name["cmyk.jpeg"].ndim == 3 and by_name["grey-png.png"].ndim == 2
    assert by_name["rgb.jpeg"].numel() == (tmp_path / "rgb.jpeg").stat().st_size
    decoded, bad = decode_rows(rows, CPU)
    assert bad == {} and decoded.jpeg == [r.ndim == 1 for r in rows]
    for i, x in enumerate(decoded.rows):
        with Image.open(m.resolve(i)) as img:
            want = np.asarray(to_rgb(img))
        assert x.shape == (3, *want.shape[:2]) and x.dtype == torch.uint8
        assert np.array_equal(x.permute(1, 2, 0).numpy(), want), m.paths[i]  # bit for bit


def test_a_jpeg_that_fails_to_decode_is_named_and_the_others_decode(tmp_path):
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    textured(rng, (40, 30)).save(buf, "JPEG")
    good = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    cut = good[: len(good) // 2].clone()
    decoded, bad = decode_rows([good, cut, good], CPU)
    assert list(bad) == [1] and "truncated" in bad[1] and ".cpp" not in bad[1]
    assert torch.equal(decoded.rows[0], decoded.rows[2]) and decoded.rows[0].shape == (3, 30, 40)
    assert decoded.jpeg == [True, False, True]  # the placeholder is not reduced


def test_a_device_decoded_set_is_keyed_apart_cached_found_and_listed(capsys, tmp_path):
    data = ["--data", str(jpeg_dataset(tmp_path / "j")), "--store", str(tmp_path / "s")]
    b = ["-b", TINY, "--image-size", str(SIZE)]
    code, out, err = cli(capsys, "extract", *data, *b, "--decode", "device", "--json")
    assert code == 0, err
    [res] = json.loads(out)
    ds = FeatureStore(tmp_path / "s").datasets()[0]
    es = ds.embedding_set(res["key"])
    assert es.attrs["key_fields"]["decode"] == DEVICE_DECODES["cpu"]
    assert es.attrs["key_fields"]["resize"] == BATCHED_RESIZE
    assert "decoded there in full" in es.provenance.resize
    code, out, err = cli(capsys, "extract", *data, *b, "--decode", "device", "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "cached", err
    code, out, err = cli(capsys, "probe", *data, *b, "--bootstrap", "0", "--json")
    assert code == 0 and json.loads(out)[0]["key"] == res["key"], err  # the spec finds it
    code, out, err = cli(capsys, "extract", *data, *b, "--json")  # PIL's: a set of its own
    assert code == 0, err
    pil = ds.embedding_set(json.loads(out)[0]["key"])
    assert pil.key != es.key and pil.attrs["key_fields"]["decode"] == DECODE
    assert "resize" not in pil.attrs["key_fields"]
    code, out, err = cli(capsys, "ls", "--store", str(tmp_path / "s"))
    assert code == 0 and "libjpeg, torch resize" in out, out


def test_workers_and_two_preprocessings_decode_once_and_give_the_same_bits(tmp_path,
                                                                            monkeypatch):
    import featstore.extract.engine as engine

    m = load_dataset(jpeg_dataset(tmp_path / "j", n=30))
    specs = [parse_backbone(TINY, input_size=SIZE), parse_backbone(TINY, input_size=48)]
    kw = {"batch_size": 12, "shard_rows": 20, "decode": "device"}
    alone = [extract_embeddings(m, [s], FeatureStore(tmp_path / f"a{k}"), num_workers=0,
                                **kw)[0] for k, s in enumerate(specs)]
    calls = []
    real = engine.decode_rows
    monkeypatch.setattr(engine, "decode_rows", lambda rows, device: (
        calls.append(len(rows)), real(rows, device))[1])
    monkeypatch.setattr(engine, "WORKER_BATCH", 5)  # 12 = 5+5+2; shards end mid-batch
    both = extract_embeddings(m, specs, FeatureStore(tmp_path / "b"), num_workers=2, **kw)
    assert sorted(calls) == sorted([12, 8, 10]), calls  # once per model batch, not per view
    for a, k, b in zip(alone, range(2), both, strict=True):
        assert a.key == b.key
        xa = FeatureStore(tmp_path / f"a{k}").load(m, a.key).X
        assert np.array_equal(xa, FeatureStore(tmp_path / "b").load(m, b.key).X)


def test_a_truncated_jpeg_fails_naming_it_or_is_skipped(capsys, tmp_path):
    csv_path = jpeg_dataset(tmp_path / "j", n=12)
    bad = tmp_path / "j" / "005.jpeg"
    bad.write_bytes(bad.read_bytes()[:300])  # the header reads; the body does not decode
    data = ["--data", str(csv_path), "--store", str(tmp_path / "s"), "-b", TINY,
            "--image-size", str(SIZE), "--decode", "device"]
    code, out, err = cli(capsys, "extract", *data)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, err
    assert "id '005'" in errors[0] and "005.jpeg" in errors[0] and "Traceback" not in err
    code, out, err = cli(capsys, "extract", *data, "--on-error", "skip", "--json")
    assert code == 0 and json.loads(out)[0]["skipped"] == ["005"], err
    es = FeatureStore(tmp_path / "s").datasets()[0].embedding_sets()[0]
    m = load_dataset(csv_path)
    missing = es.missing_mask()
    assert missing.tolist() == [i == m.ids.tolist().index("005") for i in range(len(m))]


def test_equal_sized_arrays_ignore_decode_device(tmp_path):
    m = load_dataset(make_medmnist(tmp_path / "m.npz", size=28))
    prep = parse_backbone(TINY, input_size=SIZE)
    from featstore.models import build_backbone

    p = build_backbone(prep).preprocessing
    [path] = pixel_paths(m, [p], resize="cpu", device_type="cpu", decode="device")
    assert not path.encoded and path.key_decode == DECODE  # nothing to decode: --resize says


@pytest.mark.skipif(not BREAST.exists(), reason="../shared/data/medmnist not present")
@pytest.mark.parametrize("size", [None, (1000, 700)], ids=["28px", "1000x700-draft"])
def test_device_decode_embeddings_match_pil_on_real_images(tmp_path, size):
    """Real BreastMNIST ultrasound images as JPEG files: at their own 28 px, and enlarged to
    1000x700, where PIL decodes at a reduced DCT scale and the device path in full."""
    with np.load(BREAST) as z:
        px = z["test_images"][:48]
    images = {}
    for i, a in enumerate(px):
        img = Image.fromarray(a)
        images[f"{i:03d}.jpeg"] = img if size is None else img.resize(size, Image.BICUBIC)
    m = load_dataset(write_images(tmp_path / "j", images, quality=90))
    spec = parse_backbone("timm:resnet18@random", input_size=64)
    kw = {"batch_size": 16, "num_workers": 0}
    fs = FeatureStore(tmp_path / "s")
    [pil] = extract_embeddings(m, [spec], fs, **kw)
    [dev] = extract_embeddings(m, [spec], fs, decode="device", **kw)
    assert pil.key != dev.key
    a = torch.from_numpy(fs.load(m, pil.key).X).double()
    b = torch.from_numpy(fs.load(m, dev.key).X).double()
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999


@pytest.mark.parametrize(("width", "height", "size"),
                         [(1000, 700, 73), (2400, 1800, 256), (600, 450, 256), (50, 40, 36),
                          (4928, 3264, 292), (333, 999, 41)])
def test_a_jpeg_is_reduced_to_the_size_pil_s_draft_decodes_it_at(tmp_path, width, height, size):
    from featstore.extract.pixels import reduce_like_draft

    path = tmp_path / "x.jpeg"
    textured(np.random.default_rng(3), (width, height)).save(path, quality=90)
    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        img.load()
        want = np.array(img)
    full = decode_rows([torch.from_numpy(np.fromfile(path, dtype=np.uint8))], CPU)[0].rows[0]
    got = reduce_like_draft(full, size)
    assert got.shape == (3, *want.shape[:2])
    diff = (got.permute(1, 2, 0).int() - torch.from_numpy(want).int()).abs().float()
    assert diff.mean() < 1.5  # block means, close to libjpeg's reduced IDCT


def test_without_torchcodec_torchvision_s_decoder_gives_the_same_bits(tmp_path, monkeypatch):
    from featstore.extract.pixels import _working_decoder, jpeg_decoder

    m = load_dataset(jpeg_dataset(tmp_path / "j", n=6))
    rows = [torch.from_numpy(read_encoded(m, i)) for i in range(len(m))]
    first = decode_rows(rows, CPU)[0].rows
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # the extra not installed
    _working_decoder.cache_clear()
    try:
        assert jpeg_decoder()[1].startswith("torchvision ")
        for a, b in zip(first, decode_rows(rows, CPU)[0].rows, strict=True):
            assert torch.equal(a, b)
    finally:
        _working_decoder.cache_clear()


def test_a_decoder_that_imports_but_cannot_run_gives_way(monkeypatch):
    import types

    from featstore.errors import FeatstoreError
    from featstore.extract.pixels import _working_decoder, jpeg_decoder

    def broken(*a, **k):
        raise RuntimeError("undefined symbol: _ZN2at4_ops (built for another torch)")

    monkeypatch.setitem(sys.modules, "torchcodec.decoders",
                        types.SimpleNamespace(decode_jpeg=broken))
    _working_decoder.cache_clear()
    try:
        assert jpeg_decoder()[1].startswith("torchvision ")  # not every file failing
        monkeypatch.setitem(sys.modules, "torchvision.io",
                            types.SimpleNamespace(decode_jpeg=broken))
        _working_decoder.cache_clear()
        with pytest.raises(FeatstoreError, match="no JPEG decoder runs on cpu.*torchcodec: "
                                                 "RuntimeError: undefined symbol"):
            jpeg_decoder()
    finally:
        _working_decoder.cache_clear()


def test_a_pipeline_extracting_with_decode_device_plans_as_cached(capsys, tmp_path):
    from featstore.pipeline import load_pipeline
    from featstore.pipeline.plan import plan_pipeline

    csv_path = jpeg_dataset(tmp_path / "j", n=16)
    toml = decode_device_pipeline(tmp_path, tmp_path / "store", csv_path)
    code, out, err = cli(capsys, "run", str(toml), "--json")
    assert code == 0, err
    [es] = FeatureStore(tmp_path / "store").datasets()[0].embedding_sets()
    assert es.attrs["key_fields"]["decode"] == DEVICE_DECODES["cpu"]
    plan = plan_pipeline(load_pipeline(toml))
    assert [s.cached for s in plan.steps] == [True, True], [s.id for s in plan.steps]


def test_an_exif_rotated_jpeg_is_not_turned_upright(tmp_path):
    """TorchCodec turns a JPEG by its EXIF orientation, PIL's path does not: such a file
    is decoded in the worker, so both paths see it as stored."""
    img = textured(np.random.default_rng(4), (60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    m = load_dataset(write_images(tmp_path, {"turned.jpeg": img, "plain.jpeg": img},
                                  quality=90, exif=exif.tobytes()))
    rows = [torch.from_numpy(read_encoded(m, i)) for i in range(len(m))]
    assert [r.ndim for r in rows] == [3, 3]  # both tagged (the tag is written to both)
    for i, (x, _) in enumerate(zip(decode_rows(rows, CPU)[0].rows, rows, strict=True)):
        with Image.open(m.resolve(i)) as im:
            assert np.array_equal(x.permute(1, 2, 0).numpy(), np.asarray(im.convert("RGB")))
    m = load_dataset(write_images(tmp_path / "plain", {"plain.jpeg": img}, quality=90))
    assert read_encoded(m, 0).ndim == 1  # no orientation: its bytes go


def test_a_device_out_of_memory_is_not_blamed_on_an_image(tmp_path, monkeypatch):
    import featstore.extract.pixels as pixels

    m = load_dataset(jpeg_dataset(tmp_path / "j", n=8))

    def out_of_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pixels, "jpeg_decoder", lambda device: (out_of_memory, "a full GPU"))
    with pytest.raises(torch.OutOfMemoryError):  # not skipped as unreadable rows
        extract_embeddings(m, [parse_backbone(TINY, input_size=SIZE)],
                           FeatureStore(tmp_path / "s"), decode="device", on_error="skip",
                           num_workers=0)


def test_a_set_decoded_on_the_other_device_is_a_cache_hit_either_way(tmp_path, monkeypatch):
    import featstore.extract.keys as keys
    import featstore.extract.pixels as pixels

    m = load_dataset(jpeg_dataset(tmp_path / "j", n=8))
    spec = parse_backbone(TINY, input_size=SIZE)
    fs = FeatureStore(tmp_path / "s")
    as_if_cuda = {"cuda": DEVICE_DECODES["cuda"], "cpu": DEVICE_DECODES["cuda"]}
    monkeypatch.setattr(pixels, "DEVICE_DECODES", as_if_cuda)  # a set made on a GPU
    [made] = extract_embeddings(m, [spec], fs, decode="device", num_workers=0)
    monkeypatch.setattr(pixels, "DEVICE_DECODES", keys.DEVICE_DECODES)
    assert fs.dataset(m).embedding_set(made.key).attrs["key_fields"]["decode"] == \
        DEVICE_DECODES["cuda"]
    for device in ("auto", "cpu"):  # the fast cache hit and the engine agree
        [hit] = extract_embeddings(m, [spec], fs, decode="device", device=device,
                                   num_workers=0)
        assert (hit.key, hit.status) == (made.key, "cached"), device
    [pil] = extract_embeddings(m, [spec], fs, num_workers=0)  # --decode cpu: PIL's own set
    assert pil.key != made.key and pil.status == "extracted"


def test_a_pipeline_with_decode_device_makes_and_probes_its_own_set(capsys, tmp_path):
    """A PIL set already in the store is not what ``decode = "device"`` asks for: the plan
    does not count it, the extract step makes the device's set, the probe reads that."""
    from featstore.pipeline import load_pipeline
    from featstore.pipeline.plan import plan_pipeline

    csv_path = jpeg_dataset(tmp_path / "j", n=16)
    store = tmp_path / "store"
    code, out, err = cli(capsys, "extract", "--data", str(csv_path), "--store", str(store),
                         "-b", TINY, "--image-size", str(SIZE), "--json")
    assert code == 0, err
    pil_key = json.loads(out)[0]["key"]
    toml = decode_device_pipeline(tmp_path, store, csv_path)
    assert [s.cached for s in plan_pipeline(load_pipeline(toml)).steps] == [False, False]
    code, out, err = cli(capsys, "run", str(toml), "--json")
    assert code == 0, err
    ds = FeatureStore(store).datasets()[0]
    [device_set] = [es for es in ds.embedding_sets() if es.key != pil_key]
    assert device_set.attrs["key_fields"]["decode"] == DEVICE_DECODES["cpu"]
    assert len(device_set.probe_runs.by_id()) == 1
    assert not FeatureStore(store).dataset(load_dataset(csv_path)).embedding_set(
        pil_key).probe_runs.by_id()
    assert [s.cached for s in plan_pipeline(load_pipeline(toml)).steps] == [True, True]


def test_with_device_auto_the_cache_hit_and_the_engine_take_the_same_set(tmp_path,
                                                                        monkeypatch):
    import featstore.extract.keys as keys
    import featstore.extract.pixels as pixels

    m = load_dataset(jpeg_dataset(tmp_path / "j", n=8))
    spec = parse_backbone(TINY, input_size=SIZE)
    fs = FeatureStore(tmp_path / "s")
    made = {}
    for name in ("cuda", "cpu"):  # both decoders' sets finished in one store
        label = DEVICE_DECODES[name]
        monkeypatch.setattr(pixels, "DEVICE_DECODES", {"cuda": label, "cpu": label})
        made[name] = extract_embeddings(m, [spec], fs, decode="device", num_workers=0)[0].key
    monkeypatch.setattr(pixels, "DEVICE_DECODES", keys.DEVICE_DECODES)
    fast = extract_embeddings(m, [spec], fs, decode="device", num_workers=0)[0]
    engine = extract_embeddings(m, [spec], fs, decode="device", num_workers=0, verify=True)[0]
    assert fast.key == engine.key == made["cuda"]  # auto: the order the cache hit knows
    on_cpu = extract_embeddings(m, [spec], fs, decode="device", device="cpu", verify=True,
                                num_workers=0)[0]
    assert on_cpu.key == made["cpu"]  # a named device: its own decoder's set first
