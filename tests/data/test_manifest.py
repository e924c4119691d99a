"""Manifests: readers of the supported layouts, validation errors naming the row, the hash."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featstore.data import load_dataset, read_image
from featstore.errors import ImageReadError, ManifestError
from tests.conftest import make_medmnist


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_manifest_is_sorted_by_id_and_hash_ignores_row_order(image_csv: Path, tmp_path):
    m = load_dataset(image_csv)
    assert len(m) == 64 and list(m.ids) == sorted(m.ids)
    assert m.task == "binary" and m.num_classes == 2
    assert m.group is not None and (m.split_indices("train").size == 32)
    lines = image_csv.read_text().splitlines()
    shuffled = image_csv.parent / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert load_dataset(shuffled).sha256 == m.sha256


def test_manifest_hash_changes_with_a_label(image_csv: Path):
    m = load_dataset(image_csv)
    text = image_csv.read_text().replace("val-0003,val,images/val/val-0003.png,1",
                                         "val-0003,val,images/val/val-0003.png,0")
    changed = image_csv.parent / "changed.csv"
    changed.write_text(text)
    assert load_dataset(changed).sha256 != m.sha256


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["a", "train", "x.png", 0], ["a", "test", "y.png", 1]],
         "duplicate id 'a' at lines 2 and 3"),
        ([["a", "training", "x.png", 0]], "line 2 (id 'a'): unknown split 'training'"),
        ([["a", "train", "x.png", ""]], "line 2 (id 'a'): missing label"),
        ([["a", "train", "x.png", "-1"]], "line 2 (id 'a'): label -1 out of range"),
        ([["a", "train", "x.png", "cat"]], "line 2 (id 'a'): label 'cat'"),
    ],
)
def test_bad_rows_raise_manifest_error_naming_the_row(tmp_path, rows, message):
    path = write_csv(tmp_path / "m.csv", ["id", "split", "path", "label"], rows)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(path)


def test_missing_column_and_ragged_row_are_named(tmp_path):
    with pytest.raises(ManifestError, match="missing column 'split'"):
        load_dataset(write_csv(tmp_path / "a.csv", ["id", "path", "label"], [["a", "x", 0]]))
    p = tmp_path / "b.csv"
    p.write_text("id,split,path,label\na,train,x.png,0\nb,train,y.png\n")
    with pytest.raises(ManifestError, match="line 3: 3 fields, header has 4"):
        load_dataset(p)


def test_missing_file_is_named(tmp_path):
    path = write_csv(tmp_path / "m.csv", ["id", "split", "path", "label"],
                     [["a", "train", "gone.png", 0]])
    m = load_dataset(path)
    with pytest.raises(ManifestError, match=r"id 'a'.*file not found.*gone\.png"):
        m.check_files()


def test_patient_in_two_splits_is_rejected(tmp_path):
    path = write_csv(tmp_path / "m.csv", ["id", "split", "path", "label", "group"],
                     [["a", "train", "a.png", 0, "p1"], ["b", "test", "b.png", 1, "p1"]])
    with pytest.raises(ManifestError, match="group 'p1' is in two splits"):
        load_dataset(path)


def test_multilabel_columns_and_ordinal_task(tmp_path):
    path = write_csv(tmp_path / "m.csv", ["id", "split", "path", "label_a", "label_b"],
                     [["x", "train", "x.png", 1, 0], ["y", "test", "y.png", 0, 1]])
    m = load_dataset(path)
    assert m.task == "multilabel" and m.label_names == ("a", "b") and m.labels.shape == (2, 2)
    bad = write_csv(tmp_path / "bad.csv", ["id", "split", "path", "label_a", "label_b"],
                    [["x", "train", "x.png", 2, 0]])
    with pytest.raises(ManifestError, match="multilabel labels are 0 or 1"):
        load_dataset(bad)
    grades = write_csv(tmp_path / "g.csv", ["id", "split", "path", "label"],
                       [[f"i{k}", "train", "x.png", k] for k in range(5)])
    assert load_dataset(grades, task="ordinal").task == "ordinal"


def test_image_folder_layout(tmp_path):
    for split, cls, n in (("train", "NORMAL", 2), ("train", "PNEUMONIA", 3), ("test", "NORMAL", 1),
                          ("test", "PNEUMONIA", 1)):
        d = tmp_path / "chest_xray" / split / cls
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(d / f"person{i}_{cls}.jpeg")
    m = load_dataset(tmp_path / "chest_xray")
    assert len(m) == 7 and m.classes == ("NORMAL", "PNEUMONIA")
    assert sorted(m.labels[m.split == "train", 0].tolist()) == [0, 0, 1, 1, 1]
    assert "train/PNEUMONIA/person0_PNEUMONIA.jpeg" in set(m.ids)
    (tmp_path / "chest_xray" / "validation").mkdir()
    with pytest.raises(ManifestError, match="folder 'validation' is not a split"):
        load_dataset(tmp_path / "chest_xray")


@pytest.mark.parametrize("label_shape", ["n", "n1"])
def test_medmnist_npz_single_label_shapes(tmp_path, label_shape):
    path = make_medmnist(tmp_path / "breastmnist.npz", label_shape=label_shape)
    m = load_dataset(path)
    assert len(m) == 68 and m.task == "binary" and m.labels.shape == (68, 1)
    img = read_image(m, 0)
    assert img.mode == "RGB" and img.size == (28, 28)


def test_medmnist_npz_multilabel_rgb_and_ordinal(tmp_path):
    m = load_dataset(make_medmnist(tmp_path / "chestmnist.npz", label_shape="multi",
                                   classes=14))
    assert m.task == "multilabel" and m.labels.shape[1] == 14
    r = load_dataset(make_medmnist(tmp_path / "retinamnist_64.npz", classes=5, rgb=True,
                                   size=64))
    assert r.task == "ordinal" and r.num_classes == 5
    assert read_image(r, 0).size == (64, 64)


def test_medmnist_hash_follows_file_content(tmp_path):
    (tmp_path / "a").mkdir()
    a = load_dataset(make_medmnist(tmp_path / "a" / "x.npz", seed=0))
    b = load_dataset(make_medmnist(tmp_path / "x.npz", seed=1))
    assert a.ids.tolist() == b.ids.tolist() and a.sha256 != b.sha256


def test_corrupt_and_truncated_images_raise_image_read_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    path = write_csv(tmp_path / "m.csv", ["id", "split", "path", "label"],
                     [["bad", "train", "bad.jpg", 0], ["trunc", "train", "trunc.png", 1]])
    m = load_dataset(path)
    with pytest.raises(ImageReadError, match=r"id 'bad': cannot read .*bad\.jpg"):
        read_image(m, 0)
    with pytest.raises(ImageReadError, match=r"id 'trunc'"):
        read_image(m, 1)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    px = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    Image.fromarray(px).save(tmp_path / "x16.png")
    path = write_csv(tmp_path / "m.csv", ["id", "split", "path", "label"],
                     [["a", "train", "x16.png", 0]])
    rgb = np.asarray(read_image(load_dataset(path), 0))
    assert rgb[..., 0].tolist() == [[0, 128], [255, 64]]


def test_parquet_manifest_equals_its_csv(image_csv):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.read_csv(image_csv, dtype=str)
    pq = image_csv.with_suffix(".parquet")
    frame.to_parquet(pq)
    assert load_dataset(pq).sha256 == load_dataset(image_csv).sha256


def test_an_image_replaced_in_place_with_its_size_and_mtime_kept_is_another_dataset(
        tmp_path, monkeypatch):
    """The file fingerprint cache (one ``stat`` per file on a second look) recognises a file
    by its change time too, which no user tool can set: another image of the same size, its
    modification time restored (``touch -r``), is hashed again and changes the identity."""
    import os

    import featstore._hashing

    monkeypatch.setattr(featstore._hashing, "RACY_NS", 0)  # cache files written just now
    for name, value in (("a.bmp", 10), ("b.bmp", 200)):
        Image.new("L", (8, 8), value).save(tmp_path / name)  # BMP: same size, any pixels
    path = write_csv(tmp_path / "m.csv", ["id", "split", "path", "label"],
                     [["a", "train", "a.bmp", 0], ["b", "test", "b.bmp", 1]])
    first = load_dataset(path).identity
    assert load_dataset(path).identity == first  # (from the cache)
    st = (tmp_path / "a.bmp").stat()
    Image.new("L", (8, 8), 90).save(tmp_path / "a.bmp")
    os.utime(tmp_path / "a.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (tmp_path / "a.bmp").stat().st_size == st.st_size
    assert load_dataset(path).identity != first


def test_a_file_that_changed_while_it_was_hashed_is_not_cached(tmp_path, monkeypatch):
    import os

    import featstore._hashing
    import featstore.data.identity as identity

    monkeypatch.setattr(featstore._hashing, "RACY_NS", 0)
    for name in ("a.bmp", "b.bmp"):
        Image.new("L", (8, 8), 10).save(tmp_path / name)
    path = write_csv(tmp_path / "m.csv", ["id", "split", "path", "label"],
                     [["a", "train", "a.bmp", 0], ["b", "test", "b.bmp", 1]])
    real = identity.file_fingerprint

    def rewritten_after_the_read(file, size=None):
        fp = real(file, size)
        if file.endswith("a.bmp"):  # saved again while featstore hashed it, mtime kept
            st = os.stat(file)
            Image.new("L", (8, 8), 250).save(file)
            os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
        return fp

    monkeypatch.setattr(identity, "file_fingerprint", rewritten_after_the_read)
    load_dataset(path).identity  # noqa: B018  (hashes and caches what it may)
    monkeypatch.setattr(identity, "file_fingerprint", real)
    fresh = tmp_path / "copy"
    fresh.mkdir()
    for name in ("a.bmp", "b.bmp"):
        (fresh / name).write_bytes((tmp_path / name).read_bytes())
    copy = write_csv(fresh / "m.csv", ["id", "split", "path", "label"],
                     [["a", "train", "a.bmp", 0], ["b", "test", "b.bmp", 1]])
    assert load_dataset(path).identity == load_dataset(copy).identity  # a.bmp as it is now
