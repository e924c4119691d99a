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


@pytest.fixture
def extracted(capsys, npz_file, tmp_path) -> list[str]:
    data = ["--data", str(npz_file), "--store", str(tmp_path / "s")]
    code, _, err = cli(capsys, "extract", *data, "-b", TINY, "-b", TINY_VIT, "--image-size",
                       str(SIZE))
    assert code == 0, err
    return data


def _fuse(capsys, data: list[str], *options: str) -> dict[str, dict]:
    """``fuse``'s primary records, by method (DVME uniform, concat, the two singles)."""
    code, out, err = cli(capsys, "fuse", *data, "-b", TINY, "-b", TINY_VIT, "--image-size",
                         str(SIZE), "--attention", "uniform", "--bootstrap", "10",
                         "--heads-dir", str(Path(data[3]).parent / "h"), "--json", *options)
    assert code == 0, err
    return {r["method"]: r for r in json.loads(out) if r["primary"]}


def _results(capsys, data: list[str]) -> tuple[str, list[dict]]:
    """``results``' table, and its fusion records (``--json``)."""
    code, out, err = cli(capsys, "results", *data)
    assert code == 0, err
    code, js, err = cli(capsys, "results", *data, "--json")
    assert code == 0, err
    return out, [r for r in json.loads(js) if "method" in r and r["primary"]]


def _rows(out: str, method: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("│") and f" {method}" in ln]


BASELINES = ["concat", "single:timm:test_resnet/32px@random", "single:timm:test_vit/32px@random"]


def test_another_head_width_reads_the_baselines_back_and_fits_only_the_head(capsys,
                                                                            extracted):
    """``--dim`` is the DVME head's: the concat and single baselines of ``fuse --dim 16``
    are the runs ``fuse`` made (read back, same ids), and ``results`` shows one row each."""
    made = _fuse(capsys, extracted)
    assert sorted(made) == sorted(["dvme-uniform", *BASELINES])
    assert not any(r["cached"] for r in made.values())
    narrow = _fuse(capsys, extracted, "--dim", "16")
    assert {m: r["cached"] for m, r in narrow.items()} == {
        "dvme-uniform": False, **{m: True for m in BASELINES}}
    assert {m: narrow[m]["run_id"] for m in BASELINES} == {
        m: made[m]["run_id"] for m in BASELINES}
    out, fused = _results(capsys, extracted)
    assert [len(_rows(out, m)) for m in BASELINES] == [1, 1, 1], out
    assert len(_rows(out, "dvme-uniform")) == 2, out  # two widths: two rows
    assert sorted(r["method"] for r in fused) == sorted(["dvme-uniform"] * 2 + BASELINES)


def test_baselines_stored_under_the_ids_that_held_the_head_width_are_found_and_listed_once(
        capsys, extracted, tmp_path):
    """Baselines of ``fuse --dim 16`` (and of ``--dim 32``) as an earlier featstore stored
    them, their ids and configurations holding the head's width: the same command reads them
    back, a pipeline plans them as done, ``results`` lists each baseline once, and once the
    same runs are stored under today's ids (``fuse``) only those are listed."""
    from featstore.data import load_dataset
    from featstore.runkeys import run_id as run_key
    from featstore.store import FeatureStore

    made = _fuse(capsys, extracted, "--dim", "16")
    ds = FeatureStore(extracted[3]).dataset(load_dataset(extracted[1]))
    earlier = {}
    for method in BASELINES:  # stored again as before: the config as given, keyed as it is
        run = ds.fusion_runs.get(made[method]["run_id"])
        del ds.group["fusion"][made[method]["run_id"]]
        for dim in (32, 16):
            given = {**run["config"], "dim": dim}
            earlier[method] = old_id = run_key(given)
            ds.fusion_runs.save(old_id, {**run, "config": given, "records": [
                {**r, "run_id": old_id} for r in run["records"]]})
    again = _fuse(capsys, extracted, "--dim", "16")
    assert all(r["cached"] for r in again.values())
    assert {m: again[m]["run_id"] for m in BASELINES} == earlier

    pipeline = tmp_path / "grid.toml"
    pipeline.write_text(f"""
store = "{extracted[3]}"
fractions = [1.0]
seeds = 1
bootstrap = 10
[datasets]
tiny = "{extracted[1]}"
[backbones]
resnet = {{ spec = "{TINY}", image_size = {SIZE} }}
vit = {{ spec = "{TINY_VIT}", image_size = {SIZE} }}
[fuse]
backbones = ["resnet", "vit"]
attentions = ["uniform"]
dim = 16
""")
    code, out, err = cli(capsys, "run", str(pipeline), "--dry-run", "--json")
    assert code == 0, err
    assert [s["cached"] for s in json.loads(out) if s["stage"] == "fuse"] == [True], out

    for _ in range(2):  # the earlier runs, then (made by 'fuse') the current ones
        out, fused = _results(capsys, extracted)
        assert [len(_rows(out, m)) for m in BASELINES] == [1, 1, 1], out
        assert sorted(r["method"] for r in fused if r["method"] in BASELINES) == BASELINES
        made = _fuse(capsys, extracted)
    _, fused = _results(capsys, extracted)
    assert {r["run_id"] for r in fused if r["method"] in BASELINES} == {
        made[m]["run_id"] for m in BASELINES}


def test_run_ids_of_default_settings_are_unchanged_and_a_baselines_id_holds_no_head_setting(
        monkeypatch):
    """Ids as featstore 0.1.0 computes them with the current solver (lbfgs-v3), as before
    baselines were keyed without the head's settings (stores written then are read back):
    every run of default settings, and a DVME head of another width or option; a
    baseline's id is the default's whatever the head. (A multiclass task: a binary run's id
    has named its decision threshold since, below.)"""
    import featstore.runkeys as runkeys
    from featstore.fusion import fusion_run_ids

    monkeypatch.setattr(runkeys, "version", lambda _: "0.1.0")

    def ids(task="multiclass", **settings) -> list[tuple[str, ...]]:
        return fusion_run_ids(["a" * 16, "b" * 16], "val split", task=task, **settings)

    default = [("0a208cf3dca49fd774c2fe0d",), ("347bae4601cfa7e1897242e8",),
               ("99c5d14ae7bbfa7663b47be8",), ("b2eed6573bc41baa81d415c7",)]
    assert ids() == default
    grid = ids(attentions=["softmax", "uniform"], fractions=[0.1, 1.0], seeds=2)
    assert [i for (i,) in grid[::5]] == ["1366eebe0b5055927f673dd2", "98dc99a5c157b3f0bc5b6840",
                                         "0a208cf3dca49fd774c2fe0d", "77f99e9b677e2de68a30ac77"]
    # today's id first, then the one the run had (the head's settings as given)
    assert ids(dim=16) == [("598e0589de152ecb74e99ef8",),
                           (default[1][0], "2443a3e242831d774c90c0d0"),
                           (default[2][0], "2575f84d2eef3c9b65b95843"),
                           (default[3][0], "f1315edfe526b01a7e05c30c")]
    assert ids(max_epochs=3) == [("c2dc013d25ba33f1c4d37700",),
                                 (default[1][0], "f83bcc113fc713aaff32038e"),
                                 (default[2][0], "d5cad3baf87609d0fd3023a3"),
                                 (default[3][0], "74e13a9e4b1569461016c7cc")]
    # binary runs scored accuracy and F1 at 0.5 until their threshold was chosen on val:
    # none of their ids (0.1.0's pinned here) is today's, so none is read back as today's
    before = {"dac6a5d5d754bcf04daaabea", "b3be8d823035e4d7d4b2b35b",
              "7ee458a38f6968835f76d946", "95c5825152606487c0906dd9"}
    binary = ids("binary") + ids("binary", dim=16)
    assert not before & {i for run in binary for i in run}
