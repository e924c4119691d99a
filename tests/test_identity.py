"""One dataset, one group: a dataset's store group follows what the data is (rows, task, file
content), not where it is mounted, how ``--data`` names it, or which manifest file reads it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featstore.data import identity as identity_mod
from featstore.data import load_dataset
from featstore.data.readers import BUILDERS, write_manifest_csv
from featstore.store import FeatureStore
from tests.conftest import SIZE, TINY, cli
from tests.test_datasets import make_dr, make_nih, make_pcam, make_pneumonia

RELEASES = {
    "pcam": lambda t: make_pcam(t),
    "nih": lambda t: make_nih(t),
    "pneumonia": lambda t: make_pneumonia(t),
    "eyepacs": lambda t: make_dr(t, "eyepacs"),
    "aptos": lambda t: make_dr(t, "aptos"),
}


@pytest.mark.parametrize("kind", sorted(RELEASES))
def test_folder_kind_path_built_csv_and_a_copy_are_one_dataset(tmp_path, kind):
    root = RELEASES[kind](tmp_path / "data" / kind)
    folder = load_dataset(root)
    named = load_dataset(f"{kind}:{root}")
    built = load_dataset(write_manifest_csv(BUILDERS[kind](root), tmp_path / "elsewhere" /
                                            "renamed.csv"))
    shutil.copytree(root, tmp_path / "mounted" / "other-name")
    copy = load_dataset(tmp_path / "mounted" / "other-name")
    assert folder.identity == named.identity == built.identity == copy.identity
    assert built.task == folder.task  # the sidecar keeps ordinal grading ordinal
    assert built.label_names == folder.label_names and built.classes == folder.classes
    assert built.sha256 != folder.sha256  # the path-covering hash differs; the group does not


def test_identity_follows_content_labels_and_task(image_csv):
    base = load_dataset(image_csv)
    rows = [line.split(",") for line in image_csv.read_text().splitlines()]
    col = rows[0].index("label")
    rows[1][col] = str(1 - int(rows[1][col]))
    relabel = image_csv.with_name("relabel.csv")
    relabel.write_text("\n".join(",".join(r) for r in rows))
    assert load_dataset(relabel).identity != base.identity
    assert load_dataset(image_csv, task="ordinal").identity != base.identity
    # one image re-encoded (same row, same path): another dataset
    png = image_csv.parent / base.paths[3]
    Image.open(png).convert("L").point(lambda v: 255 - v).save(png)
    assert load_dataset(image_csv).identity != base.identity


def test_extract_through_any_form_reuses_one_group(capsys, tmp_path):
    root = make_pneumonia(tmp_path / "kermany")
    store = str(tmp_path / "store")
    args = ["-b", TINY, "--image-size", str(SIZE), "--store", store, "--json"]
    code, out, _ = cli(capsys, "extract", "--data", str(root), *args)
    assert code == 0 and json.loads(out)[0]["status"] == "extracted"
    csv = write_manifest_csv(BUILDERS["pneumonia"](root), tmp_path / "m" / "pneumonia.csv")
    shutil.copytree(root, tmp_path / "copy")
    for data in (f"pneumonia:{root}/chest_xray", str(csv), str(tmp_path / "copy")):
        code, out, err = cli(capsys, "extract", "--data", data, *args)
        assert code == 0 and json.loads(out)[0]["status"] == "cached", (data, err)
    code, out, _ = cli(capsys, "probe", "--data", str(csv), *args[:-1], "--fractions", "1",
                       "--bootstrap", "10", "--json")
    assert code == 0 and json.loads(out)[0]["task"] == "binary"
    assert len(FeatureStore(store).datasets()) == 1


def test_built_csv_paths_never_climb_out(tmp_path):
    root = make_dr(tmp_path / "aptos", "aptos")
    inside = write_manifest_csv(BUILDERS["aptos"](root), root / "manifest.csv")
    outside = write_manifest_csv(BUILDERS["aptos"](root), tmp_path / "m" / "aptos.csv")
    inside_paths = [r.split(",")[2] for r in inside.read_text().splitlines()[1:]]
    outside_paths = [r.split(",")[2] for r in outside.read_text().splitlines()[1:]]
    assert all(not p.startswith(("/", "..")) for p in inside_paths)
    assert all(os.path.isabs(p) for p in outside_paths)
    assert load_dataset(inside).identity == load_dataset(outside).identity


def test_a_csv_from_an_earlier_manifest_build_finds_its_old_group(tmp_path):
    """``manifest build`` used to write ``../`` paths; the CSV rebuilt in the same place
    (absolute paths now) still maps to the group the old CSV made."""
    root = make_nih(tmp_path / "nih")
    m = load_dataset(write_manifest_csv(BUILDERS["nih"](root), tmp_path / "man" / "nih.csv"))
    rel = np.asarray([os.path.relpath(p, tmp_path / "man") for p in m.paths])
    old_sha = m._sha256(rel)
    assert old_sha in m.legacy_sha256s and old_sha != m.sha256


def test_fingerprints_are_cached_until_a_file_changes(image_csv, monkeypatch):
    m = load_dataset(image_csv)
    first = m.identity
    calls = []
    real = identity_mod.file_fingerprint
    monkeypatch.setattr(identity_mod, "file_fingerprint",
                        lambda p, size=None: calls.append(p) or real(p, size))
    assert load_dataset(image_csv).identity == first and calls == []
    png = image_csv.parent / m.paths[0]
    Image.new("L", (32, 32), 7).save(png)
    os.utime(png, ns=(1, 1))  # another mtime: the cached fingerprint no longer applies
    assert load_dataset(image_csv).identity != first
    assert [Path(p).name for p in calls] == [png.name]


def test_a_missing_file_names_its_row(image_csv):
    m = load_dataset(image_csv)
    (image_csv.parent / m.paths[2]).unlink()
    with pytest.raises(Exception, match=f"row id '{m.ids[2]}': file not found"):
        load_dataset(image_csv).identity  # noqa: B018


def test_large_files_are_fingerprinted_by_samples(tmp_path):
    big = tmp_path / "big.bin"
    data = bytearray(os.urandom(identity_mod.FULL_HASH_BYTES * 4))
    big.write_bytes(data)
    before = identity_mod.file_fingerprint(big)
    data[0] ^= 1
    big.write_bytes(data)
    assert identity_mod.file_fingerprint(big) != before  # a sampled block changed
    big.write_bytes(data + b"x")
    assert identity_mod.file_fingerprint(big).split(":")[0] == str(len(data) + 1)
