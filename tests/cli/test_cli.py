"""The command line end to end: extract -> ls/info/verify -> probe, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import SHARED_MEDMNIST, SIZE, TINY, TINY_VIT, cli


def test_cli_end_to_end_on_image_files(capsys, image_csv, store_dir):
    store = str(store_dir)
    code, out, _ = cli(capsys, "extract", "--data", str(image_csv), "-b", TINY, "-b", TINY_VIT,
                       "--image-size", str(SIZE), "--store", store, "--batch-size", "16",
                       "--shard-rows", "32", "--json")
    assert code == 0
    results = json.loads(out)
    assert [r["status"] for r in results] == ["extracted", "extracted"]
    assert all(r["random_weights"] for r in results)

    code, out, _ = cli(capsys, "extract", "--data", str(image_csv), "-b", TINY,
                       "--image-size", str(SIZE), "--store", store)
    assert code == 0 and "cache hit" in out

    code, out, _ = cli(capsys, "probe", "--data", str(image_csv), "--store", store, "--json")
    assert code == 0
    records = json.loads(out)
    primary = [r for r in records if r["primary"]]
    assert {r["backbone"] for r in primary} == {r["alias"] for r in results}
    for r in primary:
        assert r["metric"] == "auc" and 0.0 <= r["value"] <= 1.0
        assert {"dataset", "backbone", "key", "metric", "value", "fraction", "seed"} <= set(r)
        assert r["fraction"] == 1.0 and r["seed"] == 0

    code, out, err = cli(capsys, "probe", "--data", str(image_csv), "--store", store,
                         "-b", TINY, "--image-size", str(SIZE))
    assert code == 0 and "probes on test" in out and "auc" in out and "random" in err

    code, out, _ = cli(capsys, "ls", "--store", store, "--json")
    assert code == 0 and {r["status"] for r in json.loads(out)} == {"complete"}
    key = results[0]["key"]
    code, out, _ = cli(capsys, "info", key[:10], "--store", store, "--json")
    assert code == 0 and json.loads(out)[0]["key"] == key
    code, out, _ = cli(capsys, "verify", "--store", store)
    assert code == 0 and out.count(" ok") == 2


def test_probe_with_a_spec_never_reuses_other_weights(capsys, image_csv, store_dir, tmp_path):
    import timm
    import torch

    ckpt = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), ckpt)
    code, _, _ = cli(capsys, "extract", "--data", str(image_csv), "-b", f"timm:test_resnet@{ckpt}",
                     "--image-size", str(SIZE), "--store", str(store_dir))
    assert code == 0
    with torch.no_grad():  # same file name, other weights: the key must not match
        sd = torch.load(ckpt)
        sd["conv1.0.weight"] += 1
        torch.save(sd, ckpt)
    code, _, err = cli(capsys, "probe", "--data", str(image_csv), "-b", f"timm:test_resnet@{ckpt}",
                       "--image-size", str(SIZE), "--store", str(store_dir))
    assert code == 1 and "no embeddings for" in err


def test_cli_on_a_medmnist_npz(capsys, npz_file, store_dir):
    code, out, _ = cli(capsys, "extract", "--data", str(npz_file), "-b", TINY, "--image-size",
                       str(SIZE), "--store", str(store_dir))
    assert code == 0 and "68 x" in out
    code, out, _ = cli(capsys, "probe", "--data", str(npz_file), "--store", str(store_dir),
                       "--json")
    auc = next(r for r in json.loads(out) if r["metric"] == "auc")
    assert auc["n_train"] == 40 and auc["n_val"] == 12 and auc["n_test"] == 16
    assert auc["value"] > 0.8  # brightness separates the classes; random convs see it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe", "--data", "nope.csv"], "no such file or folder"),
        (["extract", "--data", "{csv}", "-b", "timm:resnet18"], "not in the local caches"),
        (["probe", "--data", "{csv}"], "is not in store"),
        (["extract", "--data", "{csv}", "-b", TINY, "--dtype", "int8"],
         "'int8' is not one of 'float32', 'float16'"),
    ],
)
def test_errors_are_one_line_without_traceback(capsys, image_csv, store_dir, args, message):
    args = [a.replace("{csv}", str(image_csv)) for a in args]
    code, out, err = cli(capsys, *args, "--store", str(store_dir))
    assert code == 1 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_script_error_and_debug(tmp_path):
    cmd = [sys.executable, "-m", "featstore", "probe", "--data", str(tmp_path / "x.csv")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "error:" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_demo_runs_and_prints_a_table(capsys, tmp_path):
    code, out, err = cli(capsys, "demo", "--store", str(tmp_path / "s"), "--workdir",
                         str(tmp_path / "d"), "--json")
    assert code == 0 and "random weights" in err
    result = json.loads(out)
    aucs = {r["backbone"]: r["value"] for r in result["probe"] if r["metric"] == "auc"}
    assert len(aucs) == 2 and max(aucs.values()) > 0.8  # a real signal was learned


@pytest.mark.skipif(not (SHARED_MEDMNIST / "breastmnist.npz").exists(),
                    reason="../shared/data/medmnist not present")
def test_real_breastmnist_extract_and_probe(capsys, store_dir):
    data = str(SHARED_MEDMNIST / "breastmnist.npz")
    code, _, _ = cli(capsys, "extract", "--data", data, "-b", TINY, "--image-size", "64",
                     "--store", str(store_dir))
    assert code == 0
    code, out, _ = cli(capsys, "probe", "--data", data, "--store", str(store_dir), "--json")
    auc = next(r for r in json.loads(out) if r["metric"] == "auc")
    assert (auc["n_train"], auc["n_val"], auc["n_test"]) == (546, 78, 156)
    assert 0.6 < auc["value"] <= 1.0


def test_reading_a_store_that_does_not_exist_creates_nothing(capsys, tmp_path):
    store = tmp_path / "nowhere"
    code, out, err = cli(capsys, "ls", "--store", str(store), "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = cli(capsys, "verify", "--store", str(store))
    assert code == 1 and f"no store at {store}" in err
    assert not store.exists()


def test_probe_runs_are_persisted_reused_and_listed(capsys, npz_file, store_dir):
    store = ["--store", str(store_dir)]
    code, _, _ = cli(capsys, "extract", "--data", str(npz_file), "-b", TINY, "--image-size",
                     str(SIZE), *store)
    args = ["probe", "--data", str(npz_file), *store, "--probe", "linear,knn", "--fractions",
            "0.5,1.0", "--bootstrap", "50", "--json"]
    code, out, _ = cli(capsys, *args)
    first = json.loads(out)
    assert code == 0 and not any(r["cached"] for r in first)
    assert {r["probe"] for r in first} == {"linear", "knn"}
    prim = [r for r in first if r["primary"]]
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in prim)
    assert all(r["config"]["l2_grid"] and r["run_id"] for r in prim)
    code, out, _ = cli(capsys, *args)
    again = json.loads(out)
    assert all(r["cached"] for r in again)
    assert [r["value"] for r in again] == [r["value"] for r in first]
    code, out, _ = cli(capsys, "results", "--data", str(npz_file), *store, "--json")
    assert len(json.loads(out)) == len(first)
    code, out, _ = cli(capsys, *args, "--recompute")
    assert not any(r["cached"] for r in json.loads(out))
    code, out, _ = cli(capsys, "results", "--data", str(npz_file), *store)
    assert code == 0 and "knn" in out and "95% CI" in out


def test_probe_and_fuse_say_each_run_they_compute_on_stderr_and_nothing_for_a_read_back(
        capsys, npz_file, store_dir):
    data = ["--data", str(npz_file), "--store", str(store_dir), "--bootstrap", "20"]
    code, _, err = cli(capsys, "extract", "-b", TINY, "-b", TINY_VIT, "--image-size",
                       str(SIZE), "--data", str(npz_file), "--store", str(store_dir))
    assert code == 0, err
    probe = ["probe", *data, "-b", TINY, "--image-size", str(SIZE), "--fractions", "0.5,1",
             "--seeds", "2", "--json"]
    code, out, err = cli(capsys, *probe)
    lines = [line for line in err.splitlines() if line.startswith("probe ")]
    assert code == 0 and len(json.loads(out)) > 0  # stdout: the results only
    assert len(lines) == 4 and "fraction 0.5 seed 0: linear auc" in lines[0]
    assert lines[-1].split("(run ")[1].startswith("4 of 4")
    code, _, err = cli(capsys, *probe)  # read back: nothing computed, nothing said
    assert code == 0 and not [line for line in err.splitlines() if line.startswith("probe ")]
    code, out, err = cli(capsys, "fuse", *data, "-b", TINY, "-b", TINY_VIT, "--image-size",
                         str(SIZE), "--seeds", "2", "--heads-dir", str(store_dir / "h"),
                         "--json")
    lines = [line for line in err.splitlines() if line.startswith("fuse ")]
    assert code == 0 and json.loads(out) and len(lines) == 2
    assert "dvme-softmax auc" in lines[0] and "concat auc" in lines[0]


def test_a_long_run_says_how_far_it_is_inside_the_run(capsys, monkeypatch, npz_file,
                                                      store_dir):
    # lines come at most every progress.EVERY seconds; at 0 every step says one, so the
    # test does not depend on how fast this machine is
    from featstore import progress

    monkeypatch.setattr(progress, "EVERY", 0.0)
    data = ["--data", str(npz_file), "--store", str(store_dir), "--bootstrap", "20"]
    code, _, err = cli(capsys, "extract", "-b", TINY, "-b", TINY_VIT, "--image-size",
                       str(SIZE), *data[:4])
    assert code == 0, err
    code, out, err = cli(capsys, "probe", *data, "-b", TINY, "--image-size", str(SIZE),
                         "--probe", "linear,knn", "--json")
    inside = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert code == 0 and json.loads(out)  # stdout: the results only
    assert any(line.startswith("linear probe on ") and " L2 values converged" in line
               for line in inside), err
    assert any(line.startswith("kNN over ") and " queries" in line for line in inside), err
    code, out, err = cli(capsys, "fuse", *data, "-b", TINY, "-b", TINY_VIT, "--image-size",
                         str(SIZE), "--json")
    inside = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert code == 0 and json.loads(out)
    assert any(line.startswith("DVME softmax on ") and ", val " in line for line in inside), err
    code, _, err = cli(capsys, "probe", *data, "-b", TINY, "--image-size", str(SIZE))
    assert code == 0 and not [line for line in err.splitlines() if line.startswith("  ")]
