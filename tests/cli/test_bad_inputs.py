"""The bad-input catalogue: every case is one line naming the culprit, exit code 1, and the
store loses nothing. One row a case; add new bad inputs here, so the catalogue only grows."""

from __future__ import annotations

import json
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SIZE, TINY, TINY_VIT, cli, make_medmnist


def csv_file(tmp: Path, rows: list[str], *, bom: bool = False, images: int = 4) -> Path:
    """A manifest CSV over ``images`` small PNGs; ``rows`` are its data lines."""
    folder = tmp / "csv"
    folder.mkdir(exist_ok=True)
    for i in range(images):
        Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    text = "\n".join(["id,split,path,label", *rows]) + "\n"
    (folder / "m.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return folder / "m.csv"


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width x height`` pixels (a decompression bomb, a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def bomb_csv(tmp: Path) -> Path:
    """A manifest whose row ``b`` is a PNG declaring 20000 x 20000 pixels."""
    path = csv_file(tmp, ["a,train,0.png,0", "b,train,bomb.png,1", "c,test,1.png,0",
                          "d,test,2.png,1"])
    png_header_only(path.parent / "bomb.png", 20000, 20000)
    return path


def truncated_jpeg_csv(tmp: Path) -> Path:
    """A manifest whose row ``b`` is a JPEG cut short: its header reads, its body does not
    decode (found by the device's decoder under ``--decode device``)."""
    path = csv_file(tmp, ["a,train,a.jpeg,0", "b,train,b.jpeg,1", "c,test,c.jpeg,0",
                          "d,test,d.jpeg,1"])
    rng = np.random.default_rng(0)
    for name in "abcd":
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            path.parent / f"{name}.jpeg", quality=90)
    b = path.parent / "b.jpeg"
    b.write_bytes(b.read_bytes()[: b.stat().st_size * 3 // 4])
    return path


def npz_with(tmp: Path, dtype: str) -> Path:
    path = make_medmnist(tmp / "base.npz")
    with np.load(path) as z:
        arrays = dict(z)
    if dtype == "object":
        arrays["train_images"] = np.array([object()] * len(arrays["train_images"]))
        out = tmp / "object.npz"
        np.savez(out, **arrays)  # np.savez pickles object arrays; featstore never unpickles
        return out
    arrays["train_images"] = arrays["train_images"].astype(dtype)
    np.savez(tmp / f"{dtype}.npz", **arrays)
    return tmp / f"{dtype}.npz"


def npz_damaged(tmp: Path, member: str = "train_images", at: int = 200) -> Path:
    """A MedMNIST file (compressed, as MedMNIST ships) with byte ``at`` of ``member``'s
    deflate stream flipped: the stream breaks there, or its CRC no longer fits."""
    import zipfile

    path = make_medmnist(tmp / "damaged.npz")
    with zipfile.ZipFile(path) as z:
        start = z.getinfo(f"{member}.npy").header_offset
    data = bytearray(path.read_bytes())
    names, extra = np.frombuffer(bytes(data[start + 26:start + 30]), "<u2")  # local header
    data[start + 30 + int(names) + int(extra) + at] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def image_folder_with_non_utf8_name(tmp: Path) -> Path:
    root = tmp / "folder"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("L", (8, 8), 10).save(root / split / cls / "ok.png")
    bad = root / "train" / "a" / b"\xff\xfe.png".decode("utf-8", "surrogateescape")
    Image.new("L", (8, 8), 10).save(bad)
    return root


def pipeline(tmp: Path, data: str, store: str, extra: str = "",
             backbone: str = TINY, two: bool = False) -> str:
    """A pipeline file over the cached dataset and store (an extract of one backbone; with
    ``two``, of a second, ``b2``)."""
    path = tmp / "p.toml"
    second = f'b2 = {{ spec = "{TINY_VIT}", image_size = {SIZE} }}\n' if two else ""
    path.write_text(f'store = "{store}"\nfractions = [1.0]\n{extra}\n[datasets]\nd = "{data}"\n'
                    f'[backbones]\nb = {{ spec = "{backbone}", image_size = {SIZE} }}\n{second}'
                    '[extract]\ndevice = "cpu"\n')
    return str(path)


# (case, argv built from (tmp, data, store), the message that names the culprit)
EXTRACT = ["extract", "-b", TINY, "--image-size", str(SIZE)]
FINETUNE = ["finetune", "-b", TINY, "--image-size", str(SIZE), "--batch-size", "8"]
PROBE = ["probe", "-b", TINY, "--image-size", str(SIZE), "--bootstrap", "0"]
FUSE = ["fuse", "--image-size", str(SIZE), "--bootstrap", "0", "-b", TINY, "-b", TINY_VIT]
CATALOGUE = [
    ("batch-size negative", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                             "--batch-size", "-4"], "--batch-size -4"),
    ("batch-size zero", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                         "--batch-size", "0"], "--batch-size 0"),
    ("image-size zero", lambda t, d, s: ["extract", "-b", TINY, "--image-size", "0",
                                         "--data", d, "--store", s], "--image-size 0"),
    ("shard-rows zero", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                         "--shard-rows", "0"], "--shard-rows 0"),
    ("shard-rows negative", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                             "--shard-rows", "-3"], "--shard-rows -3"),
    ("workers negative", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                          "--workers", "-1"], "--workers -1"),
    ("cuda without a GPU", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                            "--device", "cuda"], "no CUDA GPU"),
    ("not a device", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                      "--device", "tpu9"], "not a torch device"),
    ("dtype not a choice", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                            "--dtype", "int8"], "'int8' is not one of"),
    ("max-pixels zero", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                         "--max-pixels", "0"], "--max-pixels 0"),
    ("label inf", lambda t, d, s: ["manifest", "validate", str(csv_file(
        t, ["a,train,0.png,0", "b,train,1.png,inf"]))], "line 3 (id 'b'): label 'inf'"),
    ("label 1e30", lambda t, d, s: ["manifest", "validate", str(csv_file(
        t, ["a,train,0.png,1e30"]))], "line 2 (id 'a'): label '1e30'"),
    ("binary task, label 2", lambda t, d, s: ["manifest", "validate", "--task", "binary", str(
        csv_file(t, ["a,train,0.png,0", "b,train,1.png,2"]))], "label 2 out of range [0, 1]"),
    ("header-only CSV", lambda t, d, s: ["manifest", "validate", str(csv_file(t, []))],
     "no rows"),
    ("header-only CSV, extract", lambda t, d, s: [*EXTRACT, "--data", str(csv_file(t, [])),
                                                  "--store", s], "no rows"),
    ("path escapes the manifest folder", lambda t, d, s: ["manifest", "validate", str(
        csv_file(t, ["a,train,0.png,0", "b,train,sub/../../x.png,1"]))],
     "line 3 (id 'b'): path 'sub/../../x.png' leaves the manifest's folder"),
    ("file name not UTF-8", lambda t, d, s: ["manifest", "validate", str(
        image_folder_with_non_utf8_name(t))], "is not valid UTF-8"),
    ("npz float16 images", lambda t, d, s: ["manifest", "validate", str(npz_with(
        t, "float16"))], "train_images holds float16 pixels"),
    ("npz int64 images", lambda t, d, s: ["manifest", "validate", str(npz_with(
        t, "int64"))], "train_images holds int64 pixels"),
    ("npz object images", lambda t, d, s: ["manifest", "validate", str(npz_with(
        t, "object"))], "train_images cannot be read without pickle"),
    ("npz member damaged (bad CRC)", lambda t, d, s: [*EXTRACT, "--data", str(npz_damaged(
        t)), "--store", s], "id 'train-00000': cannot read"),
    ("npz member damaged, check-files", lambda t, d, s: [
        "manifest", "validate", "--check-files", str(npz_damaged(t))], "Bad CRC-32"),
    ("npz labels damaged", lambda t, d, s: ["manifest", "validate", str(npz_damaged(
        t, "train_labels", at=40))], "train_labels cannot be read"),
    ("npz compressed, images header damaged", lambda t, d, s: [
        "manifest", "validate", str(npz_damaged(t, at=2))],
     "train_images cannot be read"),
    ("decompression bomb", lambda t, d, s: [*EXTRACT, "--data", str(bomb_csv(t)),
                                            "--store", s], "id 'b'"),
    ("JPEG body truncated, decoded on the device", lambda t, d, s: [
        *EXTRACT, "--data", str(truncated_jpeg_csv(t)), "--store", s, "--decode", "device"],
     "id 'b': cannot decode"),
    ("decode not a choice", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                             "--decode", "gpu"], "'gpu' is not one of"),
    ("store is a file", lambda t, d, s: ["ls", "--store", str(csv_file(t, ["a,train,0.png,0"]))],
     "a file, not a store folder"),
    ("fraction 0", lambda t, d, s: ["probe", "--data", d, "--store", s, "--fractions", "0"],
     "--fractions 0.0: expected values in (0, 1]"),
    ("fraction above 1", lambda t, d, s: ["probe", "--data", d, "--store", s,
                                          "--fractions", "0.5,1.5"],
     "--fractions 1.5: expected values in (0, 1]"),
    ("finetune fraction above 1", lambda t, d, s: ["finetune", "--data", d, "--store", s,
                                                   "-b", "timm:test_resnet@random",
                                                   "--fractions", "2"],
     "--fractions 2.0: expected values in (0, 1]"),
    ("fuse fraction 0", lambda t, d, s: ["fuse", "--data", d, "--store", s,
                                         "-b", "timm:test_resnet@random",
                                         "-b", "timm:test_vit@random", "--image-size", "32",
                                         "--fractions", "0"],
     "--fractions 0.0: expected values in (0, 1]"),
    ("no seeds", lambda t, d, s: ["probe", "--data", d, "--store", s, "--seeds", "0"],
     "expected at least one seed"),
    ("unknown probe", lambda t, d, s: ["probe", "--data", d, "--store", s, "--probe", "svm"],
     "--probe 'svm': expected one of linear, knn"),
    ("unknown attention", lambda t, d, s: ["fuse", "--data", d, "--store", s, "-b", TINY,
                                           "-b", TINY_VIT, "--image-size", str(SIZE),
                                           "--attention", "max"],
     "--attention 'max': expected one of softmax, sigmoid, uniform"),
    ("fuse one backbone", lambda t, d, s: ["fuse", "--data", d, "--store", s, "-b", TINY,
                                           "--image-size", str(SIZE)], "2 to 8"),
    ("unknown backbone", lambda t, d, s: ["probe", "--data", d, "--store", s, "-b", "nope"],
     "no embeddings for 'nope'"),
    ("finetune epochs 0", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s,
                                           "--epochs", "0"], "--epochs 0"),
    ("finetune lr 0", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s, "--lr", "0"],
     "--lr 0.0"),
    ("finetune unknown optimizer", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s,
                                                    "--optimizer", "lamb"],
     "--optimizer 'lamb'"),
    ("finetune warmup >= epochs", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s,
                                                   "--epochs", "2", "--warmup-epochs", "2"],
     "--warmup-epochs 2"),
    ("finetune freeze unknown module", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s,
                                                        "--freeze-until", "layer9"],
     "--freeze-until 'layer9'"),
    ("finetune unknown head start", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s,
                                                     "--init-head", "lp"], "--init-head 'lp'"),
    ("finetune not a device", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s,
                                               "--device", "foo"], "--device 'foo'"),
    ("finetuned: text is not an emoji", lambda t, d, s: ["extract", "--data", d, "--store", s,
                                                         "-b", "finetuned:zzz"],
     "--backbone finetuned:zzz: no finetuning run 'zzz'"),
    ("finetune cuda without a GPU", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s,
                                                     "--device", "cuda"], "no CUDA GPU"),
    ("pipeline unknown stage", lambda t, d, s: [
        "run", pipeline(t, d, s, "[fusion]\ndim = 8")], "unknown stage or table [fusion]"),
    ("pipeline fraction above 1", lambda t, d, s: [
        "run", pipeline(t, d, s), "--set", "fractions=[1.5]"],
     "fractions = 1.5: expected values in (0, 1]"),
    ("pipeline missing dataset", lambda t, d, s: [
        "run", pipeline(t, f"{t}/gone.npz", s)], "[datasets] d:"),
    ("pipeline not a file", lambda t, d, s: ["run", f"{t}/none.toml"], "no such file"),
    ("pipeline step fails: weights missing", lambda t, d, s: [
        "run", pipeline(t, d, s, backbone=f"{TINY.split('@')[0]}@{t}/missing.pth")],
     "extract d b: "),
    ("pipeline slurm extract_tasks zero", lambda t, d, s: [
        "run", pipeline(t, d, s, "[slurm]\nextract_tasks = 0"), "--executor", "slurm"],
     "extract_tasks = 0: expected 1 or more"),
    ("pipeline slurm poll_s zero", lambda t, d, s: [
        "run", pipeline(t, d, s, "[slurm]\npoll_s = 0"), "--executor", "slurm"],
     "[slurm] poll_s = 0: expected seconds > 0"),
    ("pipeline slurm time limit inside the requeue margin", lambda t, d, s: [
        "run", pipeline(t, d, s, "[slurm]\ntimeout_min = 1"), "--executor", "slurm"],
     "[slurm] timeout_min = 1"),
    ("run jobs zero", lambda t, d, s: ["run", pipeline(t, d, s), "--jobs", "0"], "--jobs 0"),
    ("report tsne rows zero", lambda t, d, s: [
        "report", "--store", s, "--tsne-rows", "0", "-o", f"{t}/r"], "--tsne-rows 0"),
    ("pipeline l2_grid empty", lambda t, d, s: [
        "run", pipeline(t, d, s, "[probe]\nl2_grid = []")], "l2_grid = []"),
    ("pipeline device not a device", lambda t, d, s: [
        "run", pipeline(t, d, s, '[probe]\ndevice = "tpu"')], "device = 'tpu'"),
    ("pipeline lr inf", lambda t, d, s: [
        "run", pipeline(t, d, s, '[finetune]\nbackbones = ["b"]\nlr = inf')], "lr = inf"),
    ("pipeline seeds huge", lambda t, d, s: [
        "run", pipeline(t, d, s), "--set", "seeds=1000000000"], "at most 1000 seeds"),
    ("probe seeds huge", lambda t, d, s: [
        "probe", "--data", d, "--store", s, "--seeds", "1000000000"], "at most 1000 seeds"),
    ("finetune weight decay nan", lambda t, d, s: [
        *FINETUNE, "--data", d, "--store", s, "--weight-decay", "nan"], "--weight-decay nan"),
    ("extract resize not a choice", lambda t, d, s: [
        *EXTRACT, "--data", d, "--store", s, "--resize", "sideways"], "'sideways' is not one of"),
    ("pipeline finetune lr negative", lambda t, d, s: [
        "run", pipeline(t, d, s, '[finetune]\nbackbones = ["b"]\nlr = -1.0')],
     "[finetune] lr = -1.0"),
    ("probe k zero", lambda t, d, s: ["probe", "--data", d, "--store", s, "--probe", "knn",
                                      "--ks", "5,0"], "--ks 0: expected at least 1"),
    ("probe l2 negative", lambda t, d, s: ["probe", "--data", d, "--store", s,
                                           "--l2-grid", "1,-1"], "--l2-grid -1.0"),
    ("extract claim-timeout nan", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                                   "--claim-timeout", "nan"],
     "--claim-timeout nan"),
    ("pipeline ordinal decode not a choice", lambda t, d, s: [
        "run", pipeline(t, d, s, '[probe]\nordinal_decode = "median"')],
     "[probe] ordinal_decode = 'median'"),
    ("pipeline finetune workers negative", lambda t, d, s: [
        "run", pipeline(t, d, s, '[finetune]\nbackbones = ["b"]\nworkers = -2')],
     "[finetune] workers = -2"),
    ("report onto a file", lambda t, d, s: [
        "report", "--store", s, "-o", str(Path(d))], "a file is there"),
    ("report unknown dataset", lambda t, d, s: [
        "report", "--store", s, "--data", "nosuch", "-o", f"{t}/r"],
     "no dataset match 'nosuch'"),
    # issue 33, items 5, 8, 10, 11: the environment, output paths, downloads, refusals
    ("claim timeout env not a number", lambda t, d, s: [
        "FEATSTORE_CLAIM_TIMEOUT=abc", *EXTRACT, "--data", d, "--store", s],
     "FEATSTORE_CLAIM_TIMEOUT=abc: expected seconds > 0"),
    ("claim timeout env negative", lambda t, d, s: [
        "FEATSTORE_CLAIM_TIMEOUT=-5", *EXTRACT, "--data", d, "--store", s],
     "FEATSTORE_CLAIM_TIMEOUT=-5: expected seconds > 0"),
    ("export into /proc", lambda t, d, s: [
        "export", "--data", d, "--store", s, "-b", TINY, "--image-size", str(SIZE),
        "-o", "/proc/x"], "-o /proc/x: cannot write there"),
    ("export under a file", lambda t, d, s: [
        "export", "--data", d, "--store", s, "-b", TINY, "--image-size", str(SIZE),
        "--format", "h5", "-o", f"{d}/x.h5"], "pneumoniamnist.npz is a file, not a folder"),
    ("report into /proc", lambda t, d, s: ["report", "--store", s, "-o", "/proc/rep"],
     "-o /proc/rep: cannot write there"),
    ("fuse heads-dir in /proc", lambda t, d, s: [
        "fuse", "--data", d, "--store", s, "-b", TINY, "-b", TINY_VIT, "--image-size",
        str(SIZE), "--bootstrap", "10", "--no-baselines", "--heads-dir", "/proc/x"],
     "--heads-dir /proc/x: cannot write there"),
    ("download a checkpoint path that is not there", lambda t, d, s: [
        "models", "--download", f"{TINY.split('@')[0]}@{t}/x.pth"],
     "x.pth: nothing to download (the weights are the file after '@')"),
    ("finetune init-head probe, no probe", lambda t, d, s: [
        *FINETUNE, "--data", d, "--store", s, "--init-head", "probe"],
     "--init-head probe: no linear probe of"),
    ("info empty name", lambda t, d, s: ["info", "", "--store", s],
     "'': expected an embedding key prefix or a backbone alias"),
    # issue 33, items 6, 7, 9: --device checked, upper bounds, one declaration
    ("probe not a device", lambda t, d, s: [*PROBE, "--data", d, "--store", s,
                                            "--device", "foo"],
     "--device 'foo': not a torch device"),
    ("probe GPU this machine lacks", lambda t, d, s: [*PROBE, "--data", d, "--store", s,
                                                      "--device", "cuda:99"],
     "--device 'cuda:99': "),  # no CUDA GPU here (or not 99 of them)
    ("fuse not a device", lambda t, d, s: [*FUSE, "--data", d, "--store", s,
                                           "--device", "foo"],
     "--device 'foo': not a torch device"),
    ("extract mps on a machine without", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                                          "--device", "mps"],
     "--device 'mps': no MPS device on this machine"),
    ("pipeline probe device this machine lacks", lambda t, d, s: [
        "run", pipeline(t, d, s, '[probe]\ndevice = "cuda:99"'), "--dry-run"],
     "[probe] device = 'cuda:99': "),
    ("fuse dim huge", lambda t, d, s: [*FUSE, "--data", d, "--store", s,
                                       "--dim", "1000000000"],
     "--dim 1000000000: expected at most 65536"),
    ("pipeline fuse dim huge", lambda t, d, s: [
        "run", pipeline(t, d, s, '[fuse]\nbackbones = ["b", "b2"]\ndim = 100000000000',
                        two=True), "--dry-run"],
     "[fuse] dim = 100000000000: expected at most 65536"),
    ("probe bootstrap huge", lambda t, d, s: [*PROBE, "--data", d, "--store", s,
                                              "--bootstrap", "100000000"],
     "--bootstrap 100000000: expected at most 100000"),
    ("fuse bootstrap negative", lambda t, d, s: [*FUSE, "--data", d, "--store", s,
                                                 "--bootstrap", "-7"],
     "--bootstrap -7: expected at least 0"),
    ("fuse dim zero", lambda t, d, s: [*FUSE, "--data", d, "--store", s, "--dim", "0"],
     "--dim 0: expected at least 1"),
    ("pipeline --set fuse dim zero", lambda t, d, s: [
        "run", pipeline(t, d, s, '[fuse]\nbackbones = ["b", "b2"]', two=True), "--set",
        "fuse.dim=0"], "[fuse] dim = 0: expected at least 1"),
    ("fuse a set with itself", lambda t, d, s: [*FUSE[:-2], "-b", TINY, "--data", d,
                                                "--store", s],
     "--backbone 'timm:test_resnet/32px@random': repeated"),
    ("fuse attention repeated", lambda t, d, s: [*FUSE, "--data", d, "--store", s,
                                                 "--attention", "softmax,softmax"],
     "--attention 'softmax': repeated"),
    ("probe ks repeated", lambda t, d, s: [*PROBE, "--data", d, "--store", s, "--probe", "knn",
                                           "--ks", "3,3"], "--ks 3: repeated"),
    ("probe l2 repeated", lambda t, d, s: [*PROBE, "--data", d, "--store", s,
                                           "--l2-grid", "1,1"], "--l2-grid 1.0: repeated"),
    ("probe probes repeated", lambda t, d, s: [*PROBE, "--data", d, "--store", s,
                                               "--probe", "linear,linear"],
     "--probe 'linear': repeated"),
    ("probe fractions repeated", lambda t, d, s: [*PROBE, "--data", d, "--store", s,
                                                  "--fractions", "0.5,0.5"],
     "--fractions 0.5: repeated"),
    ("pipeline fuse backbones repeated", lambda t, d, s: [
        "run", pipeline(t, d, s, '[fuse]\nbackbones = ["b", "b"]'), "--dry-run"],
     "[fuse] backbones = 'b': repeated"),
    ("extract batch-size huge", lambda t, d, s: [*EXTRACT, "--data", d, "--store", s,
                                                 "--batch-size", "100000000"],
     "--batch-size 100000000: expected at most 65536"),
    ("extract image-size huge", lambda t, d, s: [
        "extract", "-b", TINY, "--image-size", "100000", "--data", d, "--store", s],
     "--image-size 100000: expected a size in pixels in [1, 8192]"),
    ("finetune epochs huge", lambda t, d, s: [*FINETUNE, "--data", d, "--store", s,
                                              "--epochs", "100000000"],
     "--epochs 100000000: expected at most 10000"),
    ("probe k huge", lambda t, d, s: [*PROBE, "--data", d, "--store", s, "--probe", "knn",
                                      "--ks", "1000000000"],
     "--ks 1000000000: expected at most 10000"),
    ("run jobs huge", lambda t, d, s: ["run", pipeline(t, d, s), "--jobs", "100000"],
     "--jobs 100000: expected a value in [1, 256]"),
    # issue 33, review: what an unset shell variable leaves (`-b timm:x@$CKPT`, `-o $OUT`)
    ("weights path empty after @", lambda t, d, s: [
        "extract", "-b", "timm:test_resnet@", "--image-size", str(SIZE), "--data", d,
        "--store", s], "backbone 'timm:test_resnet@': nothing after '@'"),
    ("download an empty spec", lambda t, d, s: ["models", "--download", ""],
     "backbone '': expected a spec"),
    ("probe an empty backbone", lambda t, d, s: ["probe", "--data", d, "--store", s, "-b", ""],
     "--backbone '': expected an alias, a key prefix or a spec, not empty text"),
    ("report to an empty output path", lambda t, d, s: ["report", "--store", s, "-o", ""],
     "'-o': expected a path, not empty text"),
    ("export to an empty output path", lambda t, d, s: [
        "export", "--data", d, "--store", s, "-b", TINY, "--image-size", str(SIZE), "-o", ""],
     "'-o': expected a path, not empty text"),
    ("fuse heads into an empty path", lambda t, d, s: [
        *FUSE, "--data", d, "--store", s, "--heads-dir", ""],
     "'--heads-dir': expected a path, not empty text"),
]


@pytest.fixture
def cached(capsys, npz_file, store_dir):
    """A store holding two complete sets; the bytes every case must leave untouched."""
    code, _, _ = cli(capsys, "extract", "--data", str(npz_file), "-b", TINY, "-b", TINY_VIT,
                     "--image-size", str(SIZE), "--store", str(store_dir))
    assert code == 0
    files = {p: p.read_bytes() for p in sorted(store_dir.rglob("*")) if p.is_file()}
    return str(npz_file), str(store_dir), files


@pytest.mark.parametrize(("case", "argv", "message"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line_exit_1_and_loses_nothing(capsys, monkeypatch, tmp_path, cached,
                                                        case, argv, message):
    data, store, files = cached
    args = argv(tmp_path, data, store)
    while re.fullmatch(r"[A-Z_]+=.*", args[0]):  # NAME=value first: the environment
        name, _, value = args.pop(0).partition("=")
        monkeypatch.setenv(name, value)
    code, out, err = cli(capsys, *args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1, (case, err)
    assert len(errors) == 1 and message in errors[0], (case, err)  # (a progress bar may precede)
    assert "internal" not in err and "Traceback" not in err
    after = {p: p.read_bytes() for p in sorted(Path(store).rglob("*")) if p.is_file()}
    assert {p: after.get(p) for p in files} == files  # every cached byte is still there



# issue 33, item 11: a refusal leaves nothing it created, in a store (a fresh one too) or
# where its output was to go; (case, argv built from (tmp, data, store))
WRITES_NOTHING = [
    ("report of an unknown dataset", lambda t, d, s: [
        "report", "--store", s, "--data", "nosuch", "-o", f"{t}/out/r"]),
    ("finetune from a probe that is not there, fresh store", lambda t, d, s: [
        *FINETUNE, "--data", d, "--store", f"{t}/fresh", "--init-head", "probe"]),
    ("export under a file", lambda t, d, s: [
        "export", "--data", d, "--store", s, "-b", TINY, "--image-size", str(SIZE),
        "-o", f"{d}/x"]),
]


@pytest.mark.parametrize(("case", "argv"), WRITES_NOTHING, ids=[c[0] for c in WRITES_NOTHING])
def test_a_refusal_creates_no_file_or_folder(capsys, tmp_path, cached, case, argv):
    data, store, _ = cached
    before = sorted(tmp_path.rglob("*"))
    code, _, err = cli(capsys, *argv(tmp_path, data, store))
    assert code == 1 and "internal" not in err, (case, err)
    assert sorted(tmp_path.rglob("*")) == before, case


def test_a_report_that_fails_writing_removes_what_it_created(capsys, monkeypatch, tmp_path,
                                                             cached):
    import errno

    from featstore.report import document

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(document, "_html", full)
    _, store, _ = cached
    code, _, err = cli(capsys, "report", "--store", store, "-o", f"{tmp_path}/out/r")
    assert code == 1 and err.strip().splitlines() == [
        f"error: -o {tmp_path}/out/r: cannot write there (No space left on device)"], err
    assert not (tmp_path / "out").exists()


def test_a_csv_with_a_byte_order_mark_reads(capsys, tmp_path):
    path = csv_file(tmp_path, ["a,train,0.png,0", "b,train,1.png,1", "c,test,2.png,0"],
                    bom=True)
    code, out, _ = cli(capsys, "manifest", "validate", str(path), "--json")
    assert code == 0 and json.loads(out)["rows"] == 3


def test_a_decompression_bomb_is_skipped_like_any_unreadable_image(capsys, tmp_path):
    path = bomb_csv(tmp_path)
    code, out, err = cli(capsys, "extract", "--data", str(path), "-b", TINY, "--image-size",
                         str(SIZE), "--store", str(tmp_path / "s"), "--on-error", "skip",
                         "--json")
    assert code == 0 and json.loads(out)[0]["skipped"] == ["b"]
    code, _, err = cli(capsys, "extract", "--data", str(path), "-b", TINY, "--image-size",
                       str(SIZE), "--store", str(tmp_path / "s2"), "--max-pixels", "50")
    assert code == 1 and "8x8 = 64 pixels, above the limit of 50" in err


def test_the_alias_ls_prints_is_accepted_by_probe_and_fuse(capsys, cached):
    data, store, _ = cached
    code, out, _ = cli(capsys, "ls", "--store", store, "--json")
    aliases = [r["backbone"] for r in json.loads(out)]
    assert aliases == ["timm:test_resnet/32px@random", "timm:test_vit/32px@random"]
    code, out, _ = cli(capsys, "probe", "--data", data, "--store", store, "-b", aliases[0],
                       "--bootstrap", "0", "--json")
    assert code == 0 and {r["backbone"] for r in json.loads(out)} == {aliases[0]}
    code, out, _ = cli(capsys, "fuse", "--data", data, "--store", store, "-b", aliases[0],
                       "-b", aliases[1], "--bootstrap", "0", "--attention", "uniform",
                       "--no-baselines", "--heads-dir", str(Path(store).parent / "h"), "--json")
    assert code == 0 and {r["method"] for r in json.loads(out)} == {"dvme-uniform"}


def test_a_missing_object_store_driver_names_the_extra(capsys, monkeypatch):
    import fsspec  # noqa: F401

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed: import fails
    registry = sys.modules["fsspec.registry"]._registry  # (fsspec.registry is a mapping)
    for protocol in ("s3", "s3a"):  # no class already imported by an earlier test
        monkeypatch.delitem(registry, protocol, raising=False)
    code, _, err = cli(capsys, "ls", "--store", "s3://bucket/prefix")
    assert code == 1 and "pip install 'featstore[s3]'" in err


@pytest.mark.parametrize("name", [".hidden", "back\\slash", "[x]", "sp ace*?"])
def test_a_dataset_named_with_odd_characters_is_listed_and_probed(capsys, tmp_path, name):
    data = make_medmnist(tmp_path / f"{name}.npz")
    store = str(tmp_path / "store")
    code, out, err = cli(capsys, "extract", "--data", str(data), "-b", TINY, "--image-size",
                         str(SIZE), "--store", store, "--json")
    assert code == 0, err
    group = json.loads(out)[0]["dataset"]
    assert not group.startswith(".") and all(c.isalnum() or c in "._-" for c in group)
    code, out, err = cli(capsys, "ls", "--store", store, "--json")
    assert code == 0 and [r["dataset"] for r in json.loads(out)] == [group], err
    code, out, err = cli(capsys, "probe", "--data", str(data), "--store", store,
                         "--bootstrap", "0", "--json")
    assert code == 0 and json.loads(out)[0]["dataset"] == group, err


def test_a_bracketed_dataset_name_does_not_break_ls_on_s3(capsys, tmp_path, s3_store):
    data = make_medmnist(tmp_path / "[x].npz")
    code, _, err = cli(capsys, "extract", "--data", str(data), "-b", TINY, "--image-size",
                       str(SIZE), "--store", s3_store)
    assert code == 0, err
    code, out, err = cli(capsys, "ls", "--store", s3_store, "--json")
    assert code == 0 and len(json.loads(out)) == 1, err


def test_bracketed_names_print_as_they_are(capsys, tmp_path):
    import torch

    from featstore.models import build_backbone, parse_backbone

    weights = tmp_path / "[x] run.pth"
    torch.save(build_backbone(parse_backbone(TINY, input_size=SIZE)).model.state_dict(), weights)
    data = make_medmnist(tmp_path / "m.npz")
    store = str(tmp_path / "s")
    spec = f"{TINY.split('@')[0]}@{weights}"
    code, _, err = cli(capsys, "extract", "--data", str(data), "-b", spec, "--image-size",
                       str(SIZE), "--store", store)
    assert code == 0, err
    for args in (["ls", "--store", store], ["verify", "--store", store],
                 ["copy", store, str(tmp_path / "c")]):
        code, out, err = cli(capsys, *args)
        assert code == 0 and "[x] run.pth" in out + err, (args, out, err)
    pipe = tmp_path / "p.toml"
    pipe.write_text(f'name = "[/oops] x"\nstore = "{store}"\n[datasets]\nd = "{data}"\n'
                    f'[backbones]\nb = {{ spec = "{TINY}", image_size = {SIZE} }}\n'
                    '[extract]\ndevice = "cpu"\n')
    code, out, err = cli(capsys, "run", str(pipe), "--dry-run")
    assert code == 0 and "plan of [/oops] x" in out, err


def test_a_device_is_checked_when_every_run_is_read_back_and_auto_computes(capsys, cached):
    data, store, _ = cached
    probe = ["probe", "--data", data, "--store", store, "-b", TINY, "--image-size", str(SIZE),
             "--bootstrap", "0", "--json"]
    fuse = ["fuse", "--data", data, "--store", store, "-b", TINY, "-b", TINY_VIT,
            "--image-size", str(SIZE), "--bootstrap", "0", "--no-baselines", "--heads-dir",
            str(Path(store).parent / "h"), "--json"]
    for argv in (probe, fuse):
        code, out, err = cli(capsys, *argv, "--device", "auto")  # this machine's GPU, or cpu
        assert code == 0, err
        code, _, err = cli(capsys, *argv, "--device", "foo")  # every run stored: read back
        assert code == 1 and "--device 'foo': not a torch device" in err, err
