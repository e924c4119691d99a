"""Persisted fusion runs: one per method, keyed by what the method is, listed once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

from tests.conftest import SIZE, TINY, TINY_VIT, cli

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_v1"



def test_two_sets_with_one_alias_are_two_baselines(capsys, npz_file, tmp_path):
    """Two checkpoints of one file name share an alias; their single baselines must not
    share a run (the second used to read back the first's numbers)."""
    specs = []
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        torch.manual_seed(len(run) + int(run[-1]))
        torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / run / "model.pth")
        specs += ["-b", f"timm:test_resnet@{tmp_path / run / 'model.pth'}"]
    store = ["--store", str(tmp_path / "s"), "--data", str(npz_file)]
    code, out, _ = cli(capsys, "extract", *store, *specs, "--image-size", str(SIZE), "--json")
    keys = [r["key"] for r in json.loads(out)]
    assert code == 0 and len(set(keys)) == 2
    code, out, _ = cli(capsys, "fuse", *store, "-b", keys[0][:12], "-b", keys[1][:12],
                       "--attention", "uniform", "--bootstrap", "0", "--dim", "16",
                       "--heads-dir", str(tmp_path / "h"), "--json")
    singles = [r for r in json.loads(out) if r["method"].startswith("single:") and r["primary"]]
    assert code == 0 and len({r["method"] for r in singles}) == 2
    assert not any(r["cached"] for r in singles) and len({r["run_id"] for r in singles}) == 2
    code, out, _ = cli(capsys, "probe", *store, "-b", keys[0][:12], "-b", keys[1][:12],
                       "--bootstrap", "0", "--json")
    probe_auc = sorted(r["value"] for r in json.loads(out) if r["primary"])
    assert sorted(r["value"] for r in singles) == pytest.approx(probe_auc)


def test_recomputing_an_old_fusion_run_lists_each_method_once(capsys, tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "v1")
    store = ["--store", str(tmp_path / "v1" / "store"), "--data", str(tmp_path / "v1" /
                                                                     "tiny.npz")]
    # the fixture's sets as `ls` names them (timm:test_vit@random draws other weights on
    # some CPUs: see tests/store/test_compat.py)
    args = ["fuse", *store, "-b", "timm:test_resnet/32px@random", "-b",
            "timm:test_vit/32px@random", "--bootstrap", "20", "--heads-dir", str(tmp_path / "h"),
            "--json"]
    code, out, _ = cli(capsys, *args, "--recompute")
    assert code == 0 and not any(r["cached"] for r in json.loads(out))
    code, out, _ = cli(capsys, "results", *store, "--json")
    fused = [r for r in json.loads(out) if "method" in r and r["primary"]]
    assert sorted(r["method"] for r in fused) == [
        "concat", "dvme-softmax", "single:timm:test_resnet/32px@random",
        "single:timm:test_vit/32px@random"]
    assert all(r["random_weights"] for r in fused)


def test_an_alias_shared_by_two_sets_asks_for_a_key(capsys, npz_file, tmp_path):
    store = ["--store", str(tmp_path / "s"), "--data", str(npz_file)]
    for dtype in ("float32", "float16"):
        code, _, _ = cli(capsys, "extract", *store, "-b", TINY, "--image-size", str(SIZE),
                         "--dtype", dtype)
        assert code == 0
    code, _, err = cli(capsys, "probe", *store, "-b", "timm:test_resnet/32px@random")
    assert code == 1 and "matches 2 embedding sets" in err and "pass a key prefix" in err


def test_an_earlier_heads_dvme_run_is_listed_until_made_again_then_hidden(npz_file, tmp_path,
                                                                          monkeypatch):
    """A DVME run of an earlier head version is never read back as the current head's, and
    is listed until the same run is made by the current head: then only that one is."""
    import featstore.fusion.run as fusion_run
    from featstore import FeatureStore, extract_embeddings, load_dataset, parse_backbone
    from featstore.choices import HEAD_VERSION
    from featstore.fusion import DVME, fuse_grid, stored_fusion_records
    from featstore.runkeys import run_id as run_key

    m = load_dataset(npz_file)
    fs = FeatureStore(tmp_path / "s")
    results = extract_embeddings(m, [parse_backbone(b, input_size=SIZE)
                                     for b in (TINY, TINY_VIT)], fs)
    sets = [fs.dataset(m).embedding_set(r.key) for r in results]
    kw = {"task": m.task, "attentions": ["softmax"], "n_bootstrap": 0, "max_epochs": 3,
          "baselines": False}

    def listed() -> list[tuple[int, str]]:
        return sorted((r.seed, r.config["method"]) for r in stored_fusion_records(
            [sets[0].dataset]) if r.primary)

    old = f"dvme-softmax@head-v{HEAD_VERSION - 1}"
    with monkeypatch.context() as mp:
        mp.setattr(fusion_run, "HEAD_VERSION", HEAD_VERSION - 1)
        mp.setattr(DVME, "_head_version", HEAD_VERSION - 1)
        assert not any(r.cached for r in fuse_grid(sets, seeds=2, **kw))
    assert listed() == [(0, old), (1, old)]
    group = sets[0].dataset
    for run in list(group.fusion_runs.by_id().values()):  # seed 1 as an earlier solver made
        if run["config"]["seed"] == 1:  # it too, before the current solver made it again
            older = {k: v for k, v in run["config"].items() if k != "solver"}
            group.fusion_runs.save(run_key(older), {**run, "config": older})
    assert len(group.fusion_runs.by_id()) == 3 and listed() == [(0, old), (1, old)]
    again = fuse_grid(sets, seeds=1, **kw)
    assert not any(r.cached for r in again)  # never read back as the current head's
    assert listed() == [(0, f"dvme-softmax@head-v{HEAD_VERSION}"), (1, old)]
