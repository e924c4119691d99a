"""Raw release layouts: miniature replicas with the real file names, dataset names and dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore.cli import main
from featstore.data import load_dataset, read_image
from featstore.errors import ManifestError
from tests.conftest import SIZE, TINY


def make_pcam(root: Path, n=(24, 8, 12), seed=0, x_shape=(96, 96, 3)) -> Path:
    """camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 as released (x uint8 NHWC,
    y (N,1,1,1)); tumour patches carry a brighter blob, a signal a probe can learn."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), n, strict=True):
        y = (np.arange(count) % 2).astype(np.uint8)
        x = rng.integers(60, 140, (count, *x_shape)).astype(np.uint8)
        x[y == 1, 30:60, 30:60] = 230
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x, chunks=(1, *x_shape), compression="gzip")
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y.reshape(-1, 1, 1, 1))
    return root


def test_pcam_manifest_from_the_release_files(tmp_path):
    m = load_dataset(make_pcam(tmp_path / "pcam"))
    assert len(m) == 44 and m.task == "binary" and m.classes == ("normal", "tumour")
    assert {s: int((m.split == s).sum()) for s in ("train", "val", "test")} == {
        "train": 24, "val": 8, "test": 12}
    i = int(np.flatnonzero(m.ids == "val-000003")[0])
    assert m.labels[i, 0] == 1 and m.paths[i] == "camelyonpatch_level_2_split_valid_x.h5"
    img = np.asarray(read_image(m, i))
    assert img.shape == (96, 96, 3) and img[40, 40, 0] == 230


def test_pcam_bad_layouts_name_the_file(tmp_path):
    root = make_pcam(tmp_path / "a")
    (root / "camelyonpatch_level_2_split_test_y.h5").unlink()
    with pytest.raises(ManifestError, match="missing: camelyonpatch_level_2_split_test_y.h5"):
        load_dataset(root)
    root = make_pcam(tmp_path / "b", x_shape=(64, 64, 3))
    with pytest.raises(ManifestError, match=r"split_train_x\.h5: x has shape \(24, 64, 64, 3\)"):
        load_dataset(root)
    root = make_pcam(tmp_path / "c")
    with h5py.File(root / "camelyonpatch_level_2_split_valid_y.h5", "w") as f:
        f.create_dataset("y", data=np.zeros((5, 1, 1, 1), np.uint8))
    with pytest.raises(ManifestError, match=r"valid_y\.h5: y has shape \(5, 1, 1, 1\)"):
        load_dataset(root)


def test_pcam_labels_are_part_of_the_hash(tmp_path):
    a = load_dataset(make_pcam(tmp_path / "a"))
    root = make_pcam(tmp_path / "b")
    with h5py.File(root / "camelyonpatch_level_2_split_test_y.h5", "r+") as f:
        f["y"][0] = 1 - f["y"][0]
    assert load_dataset(root).sha256 != a.sha256


def test_pcam_extract_and_probe_end_to_end(capsys, tmp_path):
    root = make_pcam(tmp_path / "pcam")
    store = ["--store", str(tmp_path / "store")]
    with pytest.raises(SystemExit) as exc:  # two workers: one h5 handle per worker
        main(["extract", "--data", str(root), "-b", TINY, "--image-size", str(SIZE), *store,
              "--workers", "2", "--batch-size", "8"])
    assert exc.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["probe", "--data", str(root), *store, "--bootstrap", "20", "--json"])
    auc = next(r for r in json.loads(capsys.readouterr().out) if r["metric"] == "auc")
    assert auc["n_test"] == 12 and auc["value"] > 0.8
