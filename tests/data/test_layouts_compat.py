"""A store written by an earlier featstore keeps its dataset groups: every release layout,
read from its seeded replica, gives the same manifest name and a legacy sha256 equal to the one
before the readers were reorganised (pinned below). Groups are found by content identity now;
a group made before that is adopted through this hash, so a change here orphans it."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featstore.data import Manifest, load_dataset
from featstore.data.readers import read_pneumonia, write_manifest_csv
from featstore.demo import write_demo_dataset
from tests.conftest import make_medmnist
from tests.data.test_datasets import make_dr, make_nih, make_pcam, make_pneumonia


def repack_npz(path: Path) -> Path:
    """Rewrite an .npz with fixed zip timestamps and no compression, so its sha256 (part of
    a MedMNIST manifest's hash) depends on the arrays only, not on the clock or zlib."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for key, value in arrays.items():
            with z.open(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        "w") as f:
                np.lib.format.write_array(f, value, allow_pickle=False)
    return path


def eyepacs_with_solution(root: Path) -> Manifest:
    """EyePACS with the later-released labels of its test folder: official test, val carved."""
    make_dr(root, "eyepacs")
    (root / "test").mkdir()
    for eye in ("900_left", "900_right", "901_left"):
        Image.new("RGB", (8, 8)).save(root / "test" / f"{eye}.jpeg")
    (root / "retinopathy_solution.csv").write_text(
        "image,level,Usage\n900_left,2,Public\n900_right,3,Private\n901_left,0,Public\n")
    return load_dataset(root)


def csv_written_by_manifest_build(tmp: Path) -> Manifest:
    out = write_manifest_csv(load_dataset(make_nih(tmp / "nih")), tmp / "manifests" / "nih.csv")
    return load_dataset(out)


# case -> builds the replica under a fresh folder and reads it as a user would
REPLICAS: dict[str, Callable[[Path], Manifest]] = {
    "pcam": lambda t: load_dataset(make_pcam(t / "pcam", compression=None)),
    "nih": lambda t: load_dataset(make_nih(t / "nih")),
    "nih-40-patients": lambda t: load_dataset(make_nih(t / "nih", patients=40)),
    "pneumonia": lambda t: load_dataset(make_pneumonia(t / "kermany")),
    "pneumonia-val0.25-seed3": lambda t: read_pneumonia(make_pneumonia(t / "kermany"),
                                                        val_fraction=0.25, seed=3),
    "pneumonia-val0.1-seed0": lambda t: read_pneumonia(make_pneumonia(t / "kermany"),
                                                       val_fraction=0.1),
    "eyepacs": lambda t: load_dataset(make_dr(t / "eyepacs", "eyepacs")),
    "eyepacs-solution": lambda t: eyepacs_with_solution(t / "eyepacs"),
    "aptos": lambda t: load_dataset(make_dr(t / "aptos", "aptos")),
    "image-folder": lambda t: load_dataset(make_pneumonia(t / "kermany") / "chest_xray"),
    "medmnist": lambda t: load_dataset(repack_npz(make_medmnist(t / "pneumoniamnist.npz"))),
    "medmnist-multilabel": lambda t: load_dataset(repack_npz(make_medmnist(
        t / "chestmnist.npz", label_shape="multi", classes=14))),
    "csv": lambda t: load_dataset(write_demo_dataset(
        t / "imgs", size=32, splits={"train": 32, "val": 16, "test": 16})),
    "csv-from-manifest-build": csv_written_by_manifest_build,
}

# case -> (manifest name, manifest sha256), recorded with the readers of commit 3d0b9d8
PINNED: dict[str, tuple[str, str]] = {
    "aptos": ("aptos-split0",
        "4b06528d5da8df79397e7bcdc2a52d5c656f029aa461767cf74e7ebe8c38f6fc"),
    "csv": ("demo",
        "e7a834f58efbdf92535e8119d5500df473c0fcb45c0d727bc7eb508a29ad60b7"),
    "csv-from-manifest-build": ("nih",
        "607b6d6611149d713a6d80e3352e0f364770748527c929e8d25034875cbd47a5"),
    "eyepacs": ("eyepacs-split0",
        "cd6d181acde54b318ebb5ffc7515db8119c897fc4b89c1dcab898e525811d621"),
    "eyepacs-solution": ("eyepacs-split0",
        "5907fbd09797dc937d71b8765647a79af2d5324544ae5e56afbb17113604041e"),
    "image-folder": ("chest_xray",
        "2c5db6228b9ff20b688bf01d74ac6928a0d27860860dafa57c16046fbe9f314a"),
    "medmnist": ("pneumoniamnist",
        "3de61409a331ac73c41336bc20f606bd93df9006b51688d34df0b90b75169995"),
    "medmnist-multilabel": ("chestmnist",
        "e20c2357b3594098fb353337f65c2c175737ad4ba47eef57125ea51a24a250b1"),
    "nih": ("nih-chestxray14",
        "708d1dbcb8f305f96ce2b5ff43fae0cd631d11f3454bc79b2d1b9096d2462c6d"),
    "nih-40-patients": ("nih-chestxray14",
        "54d2f3b050138dae354cbedcd5ecf821e9a73d6bac117f09dc0860dce5097771"),
    "pcam": ("pcam",
        "248e2dc3b8c7c229a9340d467c67ac5ee71a763c6968d88bc372778dc3676054"),
    "pneumonia": ("pneumonia",
        "ae1d87aebada871a34086002f394c2e8ee2713b61c692779f51226ae09c1e917"),
    "pneumonia-val0.1-seed0": ("pneumonia-val0.1-seed0",
        "23e0401afcb670be3e5dbb4ceaefe6ea6a6cb4fbb69579230b5a39355f89f2fd"),
    "pneumonia-val0.25-seed3": ("pneumonia-val0.25-seed3",
        "fc13b301f02031c3a51991780411d5ba4d45b854b16c87ed8a05e6b724c3b0d4"),
}


@pytest.mark.parametrize("case", sorted(REPLICAS))
def test_release_layout_keeps_its_manifest_name_and_hash(tmp_path, case):
    m = REPLICAS[case](tmp_path)
    name, sha = PINNED[case]
    assert m.name == name and sha in m.legacy_sha256s
