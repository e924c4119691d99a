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


def make_pcam(root: Path, n=(24, 8, 12), seed=0, x_shape=(96, 96, 3),
              compression: str | None = "gzip") -> Path:
    """camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 as released (x uint8 NHWC,
    y (N,1,1,1)); tumour patches carry a brighter blob, a signal a probe can learn.
    ``compression=None`` keeps the x files' sizes independent of the zlib build."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), n, strict=True):
        y = (np.arange(count) % 2).astype(np.uint8)
        x = rng.integers(60, 140, (count, *x_shape)).astype(np.uint8)
        x[y == 1, 30:60, 30:60] = 230
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x, chunks=(1, *x_shape), compression=compression)
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


NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def make_nih(root: Path, patients: int = 16, per_patient: int = 3, seed: int = 0) -> Path:
    """Data_Entry_2017.csv (the real header, trailing comma included), images_001/images/*.png
    and the official split lists; findings drawn so that 'Effusion' images are brighter."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images_001" / "images").mkdir(parents=True)
    lines, train_val, test = [NIH_HEADER], [], []
    for p in range(1, patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            finding = ["No Finding", "Effusion", "Effusion|Mass", "Atelectasis"][(p + k) % 4]
            lines.append(f"{name},{finding},{k},{p},58,M,PA,2682,2749,0.143,0.143,")
            px = rng.integers(40, 120, (64, 64)).astype(np.uint8)
            if "Effusion" in finding:
                px[20:50, 10:40] = 220
            Image.fromarray(px).save(root / "images_001" / "images" / name)
            (test if p > patients * 3 // 4 else train_val).append(name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_nih_manifest_multilabel_with_patient_grouped_val(tmp_path):
    m = load_dataset(make_nih(tmp_path / "nih"))
    assert len(m) == 48 and m.task == "multilabel" and len(m.label_names) == 14
    i = int(np.flatnonzero(m.ids == "00000002_000.png")[0])  # Effusion|Mass
    named = dict(zip(m.label_names, m.labels[i].tolist(), strict=True))
    assert named["Effusion"] == 1 and named["Mass"] == 1 and sum(named.values()) == 2
    j = int(np.flatnonzero(m.ids == "00000004_000.png")[0])  # No Finding
    assert m.labels[j].sum() == 0
    assert set(m.split) == {"train", "val", "test"} and (m.split == "test").sum() == 12
    for g in set(m.group):  # no patient straddles splits
        assert len(set(m.split[m.group == g])) == 1


def test_nih_bad_inputs_name_the_row(tmp_path):
    root = make_nih(tmp_path / "a")
    (root / "images_001" / "images" / "00000003_001.png").unlink()
    with pytest.raises(ManifestError, match=r"line \d+ \(id '00000003_001.png'\): no image"):
        load_dataset(root)
    root = make_nih(tmp_path / "b")
    text = (root / "Data_Entry_2017.csv").read_text().replace("Atelectasis", "Atelectasys", 1)
    (root / "Data_Entry_2017.csv").write_text(text)
    with pytest.raises(ManifestError, match="unknown finding 'Atelectasys'"):
        load_dataset(root)
    root = make_nih(tmp_path / "c")
    from PIL import Image

    Image.new("L", (8, 8)).save(root / "images_001" / "images" / "99999999_000.png")
    with pytest.raises(ManifestError, match="1 images have no row .* 99999999_000.png"):
        load_dataset(root)
    root = make_nih(tmp_path / "d")
    (root / "test_list.txt").unlink()
    with pytest.raises(ManifestError, match="file missing: test_list.txt"):
        load_dataset(root)


def test_nih_extract_and_probe_report_mean_and_per_label_auc(capsys, tmp_path):
    root = make_nih(tmp_path / "nih", patients=24)
    store = ["--store", str(tmp_path / "store")]
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--data", str(root), "-b", TINY, "--image-size", str(SIZE), *store])
    assert exc.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["probe", "--data", str(root), *store, "--bootstrap", "20", "--json"])
    recs = json.loads(capsys.readouterr().out)
    metrics = {r["metric"]: r["value"] for r in recs}
    assert "mean_auc" in metrics
    from featstore.data.readers import NIH_FINDINGS

    assert [m for m in metrics if m.startswith("auc[")] == [f"auc[{f}]" for f in NIH_FINDINGS]
    assert metrics["auc[Effusion]"] > 0.8  # the brighter images


def test_manifest_build_and_validate_round_trip(capsys, tmp_path):
    root = make_pcam(tmp_path / "pcam")
    out = tmp_path / "manifests" / "pcam.csv"
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "build", "pcam", str(root), "-o", str(out), "--json"])
    assert exc.value.code == 0 and json.loads(capsys.readouterr().out)["rows"] == 44
    back = load_dataset(out)
    orig = load_dataset(root)
    assert back.ids.tolist() == orig.ids.tolist()
    assert np.array_equal(back.labels, orig.labels)
    assert np.array_equal(np.asarray(read_image(back, 5)), np.asarray(read_image(orig, 5)))
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "validate", str(out), "--check-files"])
    assert exc.value.code == 0 and "valid" in capsys.readouterr().out
    (root / "camelyonpatch_level_2_split_test_x.h5").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "validate", str(out), "--check-files"])
    assert exc.value.code == 1 and "file not found" in capsys.readouterr().err


def make_dr(root: Path, kind: str, patients: int = 40) -> Path:
    """EyePACS trainLabels.csv (image,level) + train/<image>.jpeg, or APTOS train.csv
    (id_code,diagnosis) + train_images/<id_code>.png; grades 0-4."""
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = root / ("train" if kind == "eyepacs" else "train_images")
    folder.mkdir(parents=True)
    lines = ["image,level" if kind == "eyepacs" else "id_code,diagnosis"]
    for p in range(patients):
        eyes = (f"{p + 10}_left", f"{p + 10}_right") if kind == "eyepacs" else (f"a{p:04x}",)
        for eye in eyes:
            grade = int(rng.integers(0, 5))
            lines.append(f"{eye},{grade}")
            img = Image.fromarray(np.full((32, 32, 3), 40 * grade, np.uint8))
            img.save(folder / (f"{eye}.jpeg" if kind == "eyepacs" else f"{eye}.png"))
    (root / ("trainLabels.csv" if kind == "eyepacs" else "train.csv")).write_text(
        "\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("kind", ["eyepacs", "aptos"])
def test_diabetic_retinopathy_layouts(tmp_path, kind):
    m = load_dataset(make_dr(tmp_path / kind, kind))
    assert m.task == "ordinal" and m.num_classes == 5
    assert len(m) == (80 if kind == "eyepacs" else 40)
    assert set(m.split) == {"train", "val", "test"}
    if kind == "eyepacs":  # both eyes of a patient: one group, one split
        i = int(np.flatnonzero(m.ids == "10_left")[0])
        j = int(np.flatnonzero(m.ids == "10_right")[0])
        assert m.group[i] == m.group[j] and m.split[i] == m.split[j]
    again = load_dataset(make_dr(tmp_path / f"{kind}2", kind))
    assert again.split.tolist() == m.split.tolist()  # the split is reproducible


def test_diabetic_retinopathy_bad_inputs(tmp_path):
    root = make_dr(tmp_path / "a", "eyepacs")
    (root / "trainLabels.csv").write_text("img,grade\n10_left,0\n")
    with pytest.raises(ManifestError, match=r"header \['img', 'grade'\], expected"):
        load_dataset(root)
    root = make_dr(tmp_path / "b", "aptos")
    (root / "train_images" / "a0003.png").unlink()
    with pytest.raises(ManifestError, match=r"\(id 'a0003'\): no image a0003.png"):
        load_dataset(root)
    root = make_dr(tmp_path / "c", "aptos")
    text = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(text[:-1]) + "\n")  # last image loses its row
    with pytest.raises(ManifestError, match="1 images have no row in train.csv"):
        load_dataset(root)
    root = make_dr(tmp_path / "d", "aptos")
    lines = (root / "train.csv").read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",7"
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"line 2 \(id 'a0000'\): grade '7' is not 0-4"):
        load_dataset(root)
    lines[1] = "a0000"
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match="line 2: 1 field"):
        load_dataset(root)


def test_dr_competition_test_folders(tmp_path):
    from PIL import Image

    root = make_dr(tmp_path / "aptos", "aptos")  # test_images/ ships without labels
    (root / "test_images").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test_images" / "ffff0000.png")
    m = load_dataset(root)
    assert len(m) == 40 and "1 unlabelled images under test_images/" in m.notes[0]
    root = make_dr(tmp_path / "eyepacs", "eyepacs")
    (root / "test").mkdir()
    for eye in ("900_left", "900_right", "901_left"):
        Image.new("RGB", (8, 8)).save(root / "test" / f"{eye}.jpeg")
    assert len(load_dataset(root)) == 80
    (root / "retinopathy_solution.csv").write_text(
        "image,level,Usage\n900_left,2,Public\n900_right,3,Private\n901_left,0,Public\n")
    m = load_dataset(root)
    assert len(m) == 83 and (m.split == "test").sum() == 3
    assert set(m.ids[m.split == "test"]) == {"900_left", "900_right", "901_left"}
    assert (m.split == "val").sum() > 0 and "retinopathy_solution.csv" in m.notes[0]
    (root / "retinopathy_solution.csv").write_text("image,level,Usage\n902_left,1,Public\n")
    with pytest.raises(ManifestError, match=r"retinopathy_solution.csv: line 2 \(id '902_left'"):
        load_dataset(root)


def make_pneumonia(root: Path, seed: int = 0) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg with the release's file names:
    IM-<patient>-<k>.jpeg and NORMAL2-IM-<patient>-<k>.jpeg for normals,
    person<patient>_{bacteria,virus}_<k>.jpeg for pneumonia; person1 is in train and test,
    as in the release. Pneumonia images are brighter."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = {
        "train/NORMAL": [f"IM-{p:04d}-{k:04d}" for p in range(100, 112) for k in (1, 2)]
                        + ["NORMAL2-IM-1427-0001", "NORMAL2-IM-1427-0002"],
        "train/PNEUMONIA": [f"person{p}_bacteria_{p * 3 + k}" for p in range(1, 13)
                            for k in (0, 1)] + ["person50_virus_101"],
        "val/NORMAL": ["NORMAL2-IM-1430-0001"], "val/PNEUMONIA": ["person1946_bacteria_4874"],
        "test/NORMAL": [f"IM-{p:04d}-0001" for p in range(1, 7)],
        "test/PNEUMONIA": ["person1_virus_6", "person1_virus_7"]
                          + [f"person{p}_virus_{p}" for p in range(300, 304)],
    }
    for folder, names in files.items():
        d = root / "chest_xray" / folder
        d.mkdir(parents=True)
        for name in names:
            px = rng.integers(30, 110, (40, 40)).astype(np.uint8)
            if "PNEUMONIA" in folder:
                px[8:32, 8:32] += 120
            Image.fromarray(px).save(d / f"{name}.jpeg", quality=95)
    (root / "chest_xray" / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_pneumonia_layout_groups_patients_from_file_names(tmp_path):
    from featstore.data.readers import pneumonia_patient

    assert pneumonia_patient("person1_bacteria_1.jpeg") == "person1"
    assert pneumonia_patient("person1000_virus_1681.jpeg") == "person1000"
    assert pneumonia_patient("IM-0115-0001.jpeg") == "IM-0115"
    assert pneumonia_patient("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert pneumonia_patient("scan_12.jpeg") is None
    root = make_pneumonia(tmp_path / "kermany")
    m = load_dataset(root)
    assert m.task == "binary" and m.classes == ("normal", "pneumonia")
    assert {s: int((m.split == s).sum()) for s in ("train", "val", "test")} == {
        "train": 51, "val": 2, "test": 12}
    i = int(np.flatnonzero(m.ids == "train/PNEUMONIA/person3_bacteria_10")[0])
    assert m.labels[i, 0] == 1 and m.group[i] == "train/person3"
    assert "1 patient ids appear in more than one official split (e.g. person1)" in m.notes[0]
    carved = load_dataset(root)  # the default is the release as published
    assert carved.sha256 == m.sha256
    from featstore.data.readers import read_pneumonia

    carved = read_pneumonia(root, val_fraction=0.25, seed=3)
    val = carved.split == "val"
    assert val.sum() > 10 and (carved.split == "test").sum() == 12
    assert set(carved.labels[val & (carved.split != "test"), 0]) == {0, 1}  # stratified
    for g in set(carved.group):  # both images of a patient move together
        assert len(set(carved.split[carved.group == g])) == 1
    assert read_pneumonia(root, val_fraction=0.25, seed=3).sha256 == carved.sha256
    assert read_pneumonia(root, val_fraction=0.25, seed=4).sha256 != carved.sha256


def test_pneumonia_bad_inputs_and_cli(capsys, tmp_path):
    root = make_pneumonia(tmp_path / "a")
    (root / "chest_xray" / "test" / "NORMAL" / "IM-0001-0001.jpeg").rename(
        root / "chest_xray" / "test" / "NORMAL" / "scan7.jpeg")
    with pytest.raises(ManifestError, match="test/NORMAL/scan7.jpeg: no patient id"):
        load_dataset(root)
    root = make_pneumonia(tmp_path / "b")
    (root / "chest_xray" / "val" / "NORMAL" / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match="unexpected file chest_xray/val/NORMAL/notes.txt"):
        load_dataset(f"pneumonia:{root}")
    root = make_pneumonia(tmp_path / "c")
    out = tmp_path / "pneumonia.csv"
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "build", "pneumonia", str(root), "-o", str(out), "--val-fraction",
              "0.25", "--seed", "3", "--json"])
    assert exc.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["val"] > 10 and "more than one official split" in summary["notes"][0]
    assert load_dataset(out).split.tolist() == load_dataset(out).split.tolist()
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "build", "aptos", str(root), "-o", str(out), "--val-fraction", "0.2"])
    assert exc.value.code == 1 and "applies to pneumonia only" in capsys.readouterr().err


def test_check_files_decodes_and_names_the_broken_image(capsys, tmp_path):
    root = make_pneumonia(tmp_path / "kermany")
    out = tmp_path / "pneumonia.csv"
    main_ok = ["manifest", "validate", str(out), "--check-files"]
    with pytest.raises(SystemExit):
        main(["manifest", "build", "pneumonia", str(root), "-o", str(out)])
    with pytest.raises(SystemExit) as exc:
        main(main_ok)
    assert exc.value.code == 0
    capsys.readouterr()
    bad = root / "chest_xray" / "test" / "PNEUMONIA" / "person300_virus_300.jpeg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated JPEG
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "validate", str(out)])  # without the flag nothing is opened
    assert exc.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*main_ok, "--workers", "2"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "test/PNEUMONIA/person300_virus_300" in err
    assert "truncated" in err


def test_pcam_extra_and_compressed_files(tmp_path):
    root = make_pcam(tmp_path / "a")
    (root / "camelyonpatch_level_2_split_train_x (1).h5").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"unexpected PatchCamelyon file .*train_x \(1\)"):
        load_dataset(root)
    root = make_pcam(tmp_path / "b")
    f = root / "camelyonpatch_level_2_split_test_x.h5"
    f.rename(f.with_name(f.name + ".gz"))
    with pytest.raises(ManifestError, match="test_x.h5 .found .*h5.gz: decompress it"):
        load_dataset(root)


def test_data_accepts_a_named_layout(tmp_path):
    root = make_dr(tmp_path / "aptos", "aptos")
    named = load_dataset(f"aptos:{root}")
    assert named.sha256 == load_dataset(root).sha256 and named.task == "ordinal"
    with pytest.raises(ManifestError, match="no such file or folder: /nowhere"):
        load_dataset("pcam:/nowhere")


def test_dataset_specs_agree_with_the_readers(tmp_path):
    from featstore.data.layouts import BUILDERS, LAYOUTS
    from featstore.data.readers import PCAM_PATTERN, PCAM_SPLITS
    from featstore.data.specs import load_spec, spec_kinds

    assert spec_kinds() == sorted(BUILDERS)  # one spec per release layout, no orphan spec
    for kind in BUILDERS:
        spec = load_spec(kind)
        assert {"title", "source", "licence", "task", "metric", "splits", "files"} <= set(spec)
        rule = spec.get("split_rule", {})
        if "val" in rule:  # the split rule printed by `manifest build` is the one applied
            assert f"{rule['val']:.0%}" in spec["splits"]
            assert f"seed {rule['seed']}" in spec["splits"]
    assert sorted(load_spec("pcam")["files"]) == sorted(
        PCAM_PATTERN.format(split=s, part=p) for s, _ in PCAM_SPLITS for p in "xy")
    built = {"pcam": load_dataset(make_pcam(tmp_path / "p")),
             "nih": load_dataset(make_nih(tmp_path / "n")),
             "aptos": load_dataset(make_dr(tmp_path / "a", "aptos")),
             "eyepacs": load_dataset(make_dr(tmp_path / "e", "eyepacs")),
             "pneumonia": load_dataset(make_pneumonia(tmp_path / "k"))}
    for kind, m in built.items():
        spec = load_spec(kind)
        assert spec["task"] == LAYOUTS[kind].task == m.task
        if kind == "nih":
            assert list(m.label_names) == spec["label_names"]  # the 14 findings, in order
        elif m.classes:
            assert list(m.classes) == spec["label_names"]
        else:  # graded: one class per grade
            assert m.num_classes == len(spec["label_names"])
    with pytest.raises(ManifestError, match="no dataset spec 'nope'"):
        load_spec("nope")


@pytest.mark.parametrize("kind", ["eyepacs", "aptos"])
def test_a_small_release_never_gets_an_empty_val_or_test(tmp_path, kind):
    """10% of 5 patients rounds to 0: each split still gets a patient, train keeps the rest;
    too few patients for three splits is refused at build time, naming the counts."""
    from featstore.data import load_dataset
    from featstore.errors import ManifestError

    m = load_dataset(make_dr(tmp_path / "five", kind, patients=5))
    counts = {s: len(set(m.group[m.split == s])) for s in ("train", "val", "test")}
    assert counts["val"] >= 1 and counts["test"] >= 1 and counts["train"] >= 1
    assert sum(counts.values()) == 5
    with pytest.raises(ManifestError, match=r"2 patients \(groups\) cannot fill train"):
        load_dataset(make_dr(tmp_path / "two", kind, patients=2))


@pytest.mark.parametrize("kind", ["eyepacs", "aptos"])
def test_a_built_csv_keeps_the_task_and_classes(capsys, tmp_path, kind):
    """The CSV `manifest build` writes reads back as the release did: ordinal (scored by
    quadratic kappa), not multiclass; the sidecar never changes the dataset's hash."""
    from featstore.data import load_dataset
    from featstore.errors import ManifestError

    release = load_dataset(make_dr(tmp_path / "dr", kind))
    out = tmp_path / "dr" / "manifest.csv"
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "build", kind, str(tmp_path / "dr"), "-o", str(out)])
    assert exc.value.code == 0
    built = load_dataset(out)
    assert (built.task, built.num_classes, built.classes) == (
        "ordinal", release.num_classes, release.classes)
    sidecar = out.with_name("manifest.csv.json")
    assert json.loads(sidecar.read_text())["task"] == "ordinal"
    assert load_dataset(out, task="multiclass").task == "multiclass"  # --task still wins
    sidecar.unlink()
    assert load_dataset(out).sha256 == built.sha256
    sidecar.write_text("{broken")
    with pytest.raises(ManifestError, match="manifest.csv.json: unreadable manifest sidecar"):
        load_dataset(out)


def test_an_npz_whose_members_lack_the_npy_suffix_reads_as_numpy_loads_it(tmp_path):
    """np.load accepts members named ``train_images`` as well as ``train_images.npy``; the
    header-only check of a MedMNIST file does too, and the pixels read are the stored ones."""
    import io
    import zipfile

    from tests.conftest import make_medmnist

    src = make_medmnist(tmp_path / "src.npz")
    bare = tmp_path / "bare.npz"
    with np.load(src) as z, zipfile.ZipFile(bare, "w") as out:
        arrays = dict(z)
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr)
            out.writestr(name, buf.getvalue())
    m = load_dataset(str(bare))
    assert len(m) == sum(len(a) for k, a in arrays.items() if k.endswith("_images"))
    i = int(np.flatnonzero(m.split == "test")[3])
    px = np.asarray(read_image(m, i).convert("L"))
    assert np.array_equal(px, arrays[m.array_keys[i]][int(m.index[i])])
