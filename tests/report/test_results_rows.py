"""Results a team can trust: runs of different configurations are different rows (never
averaged as seeds), and ``copy`` carries every run a store has (probes with their heads,
fusion, finetuning with its weights), so ``results`` and ``report`` read the same on both."""

from __future__ import annotations

import json
import re

import pytest

from featstore.data import load_dataset
from featstore.store import FeatureStore
from tests.conftest import SIZE, TINY, TINY_VIT, cli, make_medmnist


def _rows(out: str, word: str) -> list[str]:
    return [line for line in out.splitlines() if word in line and line.startswith("│")]


def _seeds(line: str) -> int:
    return int(line.rstrip(" │|").split()[-1].strip("│|"))


@pytest.fixture
def extracted(capsys, npz_file, store_dir):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    code, _, err = cli(capsys, "extract", *data, "-b", TINY, "-b", TINY_VIT, "--image-size",
                       str(SIZE))
    assert code == 0, err
    return data


def test_probes_with_another_l2_grid_are_another_row_not_a_second_seed(capsys, extracted):
    for grid in ("0.1,1", "100"):
        code, _, err = cli(capsys, "probe", *extracted, "-b", TINY, "--image-size", str(SIZE),
                           "--bootstrap", "10", "--l2-grid", grid)
        assert code == 0, err
    code, out, _ = cli(capsys, "results", *extracted, "-b", TINY, "--image-size", str(SIZE))
    rows = _rows(out, "linear")
    assert len(rows) == 2, out
    assert all(_seeds(r) == 1 for r in rows), out
    # each row says what sets it apart
    assert sorted(re.search(r"linear (l2_grid=\[[^]]*\])", r).group(1) for r in rows) == [
        "l2_grid=[0.1, 1.0]", "l2_grid=[100.0]"], out


def _probe(capsys, extracted, *options: str) -> list[dict]:
    code, out, err = cli(capsys, "probe", *extracted, "-b", TINY, "--image-size", str(SIZE),
                         "--bootstrap", "10", "--json", *options)
    assert code == 0, err
    return [r for r in json.loads(out) if r["primary"]]


def test_a_setting_the_probe_does_not_use_neither_recomputes_nor_splits_its_row(capsys,
                                                                                extracted):
    """``--ks`` is the kNN probe's, ``--l2-grid`` the linear probe's: the other probe's run
    is the one already stored (read back), and ``results`` shows one row per probe."""
    made = _probe(capsys, extracted, "--probe", "linear,knn")
    assert not any(r["cached"] for r in made)
    linear = _probe(capsys, extracted, "--ks", "5")
    knn = _probe(capsys, extracted, "--probe", "knn", "--l2-grid", "100")
    assert all(r["cached"] for r in linear + knn)
    assert sorted(r["run_id"] for r in linear + knn) == sorted(r["run_id"] for r in made)
    code, out, _ = cli(capsys, "results", *extracted, "-b", TINY, "--image-size", str(SIZE))
    assert len(_rows(out, "linear")) == 1 and len(_rows(out, "knn")) == 1, out
    assert _seeds(_rows(out, "linear")[0]) == 1, out


def test_runs_stored_under_the_ids_that_held_unused_settings_are_found_and_listed_once(
        capsys, extracted):
    """A linear run of ``--ks 5`` and a kNN run of ``--l2-grid 100`` as an earlier featstore
    stored them (their ids and configurations held the setting): the same command reads
    them back; a default probe is the same run (one row), and once it is stored the earlier
    runs are not listed beside it."""
    from dataclasses import asdict

    from featstore.choices import LINEAR_SOLVER
    from featstore.probe.config import ProbeConfig
    from featstore.runkeys import decision_rule, run_id

    unused = {"linear": ("--ks", "5"), "knn": ("--l2-grid", "100")}
    made = [r for probe, (option, value) in unused.items()
            for r in _probe(capsys, extracted, "--probe", probe, option, value)]
    es = FeatureStore(extracted[3]).dataset(load_dataset(extracted[1])).embedding_sets()[0]
    earlier = {}
    for r in made:  # stored again as before: the configuration as given, keyed as it is
        run = es.probe_runs.get(r["run_id"])
        given = {**asdict(ProbeConfig(probe=r["probe"], task=r["task"], n_bootstrap=10,
                                      **{"linear": {"ks": (5,)}, "knn": {"l2_grid": (100.0,)}
                                         }[r["probe"]])),
                 **({"solver": LINEAR_SOLVER} if r["probe"] == "linear" else {}),
                 **decision_rule(r["task"])}  # (binary runs' threshold rule: today's)
        old_id = run_id({"config": given, "embedding_key": es.key})
        records = [{**rec, "run_id": old_id, "config": {**rec["config"], **given}}
                   for rec in run["records"]]
        del es.group["probes"][r["run_id"]]
        es.probe_runs.save(old_id, {**run, "config": given, "records": records})
        earlier[r["probe"]] = old_id
    again = [r for probe, (option, value) in unused.items()
             for r in _probe(capsys, extracted, "--probe", probe, option, value)]
    assert all(r["cached"] for r in again)
    assert {r["probe"]: r["run_id"] for r in again} == earlier
    for _ in range(2):  # the earlier runs, then (the defaults made) the current ones
        code, out, _ = cli(capsys, "results", *extracted, "-b", TINY, "--image-size",
                           str(SIZE))
        assert [len(_rows(out, p)) for p in ("linear", "knn")] == [1, 1], out
        assert all(_seeds(r) == 1 for r in _rows(out, "│ timm")), out
        made = _probe(capsys, extracted, "--probe", "linear,knn")
    code, out, _ = cli(capsys, "results", *extracted, "--json")
    assert {r["run_id"] for r in json.loads(out) if r.get("probe")} == {
        r["run_id"] for r in made}


def test_the_readme_ordinal_decode_example_is_two_rows_of_one_seed(capsys, tmp_path):
    data = make_medmnist(tmp_path / "retina.npz", classes=5, n=(50, 20, 20))
    args = ["--data", str(data), "--store", str(tmp_path / "s"), "--task", "ordinal"]
    code, _, err = cli(capsys, "extract", *args, "-b", TINY, "--image-size", str(SIZE))
    assert code == 0, err
    for decode in ("argmax", "expected"):
        code, _, err = cli(capsys, "probe", *args, "--bootstrap", "10",
                           "--ordinal-decode", decode)
        assert code == 0, err
    code, out, _ = cli(capsys, "results", *args)
    rows = _rows(out, "linear")
    assert len(rows) == 2 and all(_seeds(r) == 1 for r in rows), out
    assert "±" not in "".join(rows)  # one seed each: a value, never a spread


def test_dvme_at_two_widths_is_two_rows_and_the_baselines_one(capsys, extracted):
    for dim in ("16", "32"):
        code, _, err = cli(capsys, "fuse", *extracted, "-b", TINY, "-b", TINY_VIT, "--dim", dim,
                           "--image-size", str(SIZE),
                           "--bootstrap", "10", "--heads-dir", str(extracted[3]) + "-heads")
        assert code == 0, err
    code, out, _ = cli(capsys, "results", *extracted, "--json")
    fused = [r for r in json.loads(out) if r.get("method") == "dvme-softmax" and r["primary"]]
    assert sorted(r["config"]["dim"] for r in fused) == [16, 32]  # the record says its width
    code, out, _ = cli(capsys, "results", *extracted)
    dvme, concat = _rows(out, "dvme-softmax"), _rows(out, "concat")
    assert len(dvme) == 2 and all(_seeds(r) == 1 for r in dvme), out
    assert sorted(re.search(r"dvme-softmax (dim=\d+)", r).group(1) for r in dvme) == [
        "dim=16", "dim=32"], out
    assert len(concat) == 1 and _seeds(concat[0]) == 1, out  # dim does not change concat


def test_the_report_keeps_dvme_widths_apart(capsys, extracted, tmp_path):
    from featstore.report.collect import collect

    for dim in ("16", "32"):
        code, _, err = cli(capsys, "fuse", *extracted, "-b", TINY, "-b", TINY_VIT, "--dim", dim,
                           "--image-size", str(SIZE),
                           "--bootstrap", "10", "--heads-dir", str(tmp_path / "h"))
        assert code == 0, err
    [report] = collect(FeatureStore(extracted[3]))
    dvme = [row for row in report.rows if row.method.startswith("dvme-softmax")]
    assert len(dvme) == 2 and all(len(v) == 1 for row in dvme for v in row.values.values())


def test_copy_carries_finetune_runs_weights_and_probe_heads(capsys, npz_file, store_dir,
                                                           tmp_path):
    from featstore.report.collect import collect

    data = ["--data", str(npz_file), "--store", str(store_dir)]
    code, _, err = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE))
    assert code == 0, err
    code, out, err = cli(capsys, "probe", *data, "--bootstrap", "10", "--json")
    assert code == 0, err
    probe_run = json.loads(out)[0]["run_id"]
    code, out, err = cli(capsys, "finetune", *data, "-b", TINY, "--image-size", str(SIZE),
                         "--epochs", "1", "--batch-size", "8", "--bootstrap", "10", "--json")
    assert code == 0, err
    tuned = f"finetuned:{json.loads(out)[0]['run_id'][:10]}"
    for verb in (["extract"], ["probe", "--bootstrap", "10"]):  # the finetuned model, probed
        code, _, err = cli(capsys, *verb, *data, "-b", tuned)
        assert code == 0, err
    copy = tmp_path / "copy"
    code, _, err = cli(capsys, "copy", str(store_dir), str(copy))
    assert code == 0, err
    assert "1 finetuning runs copied" in err

    def results(store) -> list[tuple]:
        code, out, _ = cli(capsys, "results", "--data", str(npz_file), "--store", str(store),
                           "--json")
        assert code == 0
        return sorted((r["run_id"], r["metric"], r["value"]) for r in json.loads(out))

    assert results(copy) == results(store_dir)
    assert any(r[1] == "auc" for r in results(copy))

    def report(store) -> list[tuple]:
        [rep] = collect(FeatureStore(store))
        return [(row.backbone, row.method, row.random, row.values) for row in rep.rows]

    assert report(copy) == report(store_dir)
    assert any("finetuned" in b and random for b, _, random, _ in report(copy))
    m = load_dataset(npz_file)
    src_set = FeatureStore(store_dir).dataset(m).embedding_set(f"timm:test_resnet/{SIZE}px@random")
    dst_set = FeatureStore(copy).dataset(m).embedding_set(f"timm:test_resnet/{SIZE}px@random")
    head = dst_set.probe_head(probe_run)
    assert head is not None and (head["coef"] == src_set.probe_head(probe_run)["coef"]).all()
    # the finetuned model is a backbone on the copy: its weights come from there, checked
    code, _, err = cli(capsys, "probe", "--data", str(npz_file), "--store", str(copy),
                       "-b", tuned, "--bootstrap", "10")
    assert code == 0, err


def test_copy_of_a_finetuned_set_alone_brings_its_run(capsys, npz_file, store_dir, tmp_path):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    code, out, err = cli(capsys, "finetune", *data, "-b", TINY, "--image-size", str(SIZE),
                         "--epochs", "1", "--batch-size", "8", "--bootstrap", "10", "--json")
    assert code == 0, err
    run_id = json.loads(out)[0]["run_id"]
    code, out, err = cli(capsys, "extract", *data, "-b", f"finetuned:{run_id[:10]}", "--json")
    assert code == 0, err
    key = json.loads(out)[0]["key"]
    code, _, err = cli(capsys, "copy", str(store_dir), str(tmp_path / "c"), "--data",
                       str(npz_file), "-b", key[:12])
    assert code == 0, err
    copied = FeatureStore(tmp_path / "c").dataset(load_dataset(npz_file))
    assert list(copied.finetune_runs.by_id()) == [run_id]


def test_copy_refuses_a_finetune_run_whose_weights_are_damaged(capsys, npz_file, store_dir,
                                                               tmp_path):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    code, out, err = cli(capsys, "finetune", *data, "-b", TINY, "--image-size", str(SIZE),
                         "--epochs", "1", "--batch-size", "8", "--bootstrap", "10", "--json")
    assert code == 0, err
    run_id = json.loads(out)[0]["run_id"]
    ds = FeatureStore(store_dir).dataset(load_dataset(npz_file))
    key = f"_checkpoints/{ds.name}/{run_id}/backbone.pt"
    ds.store.objects.put(key, ds.store.objects.get(key)[:-10])
    code, _, err = cli(capsys, "copy", str(store_dir), str(tmp_path / "c"))
    assert code == 1 and f"finetuning run {run_id[:12]}" in err and "damaged" in err
    assert FeatureStore(tmp_path / "c").dataset(load_dataset(npz_file)).finetune_runs.all() == []


def test_sets_of_one_alias_at_two_dtypes_are_told_apart_and_exported(capsys, npz_file,
                                                                     store_dir, tmp_path):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    keys = {}
    for dtype in ("float32", "float16"):
        code, out, err = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE),
                             "--dtype", dtype, "--json")
        assert code == 0, err
        keys[dtype] = json.loads(out)[0]["key"]
        code, _, err = cli(capsys, "probe", *data, "-b", TINY, "--image-size", str(SIZE),
                           "--dtype", dtype, "--bootstrap", "0")
        assert code == 0, err
    code, out, _ = cli(capsys, "ls", "--store", str(store_dir))
    assert "[fp32/float32]" in out and "[fp32/float16]" in out, out
    code, out, _ = cli(capsys, "results", *data)
    assert len(_rows(out, "random [fp32/float16] ")) == 1, out  # in words, as ls says it
    assert len(_rows(out, "random [fp32/float32] ")) == 1, out
    code, _, err = cli(capsys, "export", *data, "-b", TINY, "--image-size", str(SIZE),
                       "--dtype", "float16", "-o", str(tmp_path / "x"))
    assert code == 0, err
    assert json.loads((tmp_path / "x" / "meta.json").read_text())["key"] == keys["float16"]


def test_variants_are_labelled_by_what_sets_them_apart():
    from featstore.choices import DEFAULT_L2_GRID
    from featstore.runkeys import variant_labels

    base = {"task": "binary", "fraction": 0.1, "seed": 0, "dim": 256, "solver": "lbfgs-v2",
            "method": "dvme-softmax@head-v6"}
    assert variant_labels({"a": base}) == {"a": ""}  # one variant: no label
    older = {**base, "method": "dvme-softmax@head-v5", "seed": 3}  # a seed is not a setting
    assert variant_labels({"a": base, "b": older}) == {"a": "head v6", "b": "head v5"}
    no_solver = {k: v for k, v in base.items() if k != "solver"}
    assert variant_labels({"a": base, "b": no_solver}) == {"a": "solver=lbfgs-v2",
                                                           "b": "no solver"}
    wide = {**base, "dim": 64}
    assert variant_labels({"a": base, "b": wide, "c": older}) == {
        "a": "dim=256, head v6", "b": "dim=64, head v6", "c": "dim=256, head v5"}
    default = {**base, "l2_grid": list(DEFAULT_L2_GRID)}
    short = {**base, "l2_grid": [100.0]}
    long = {**base, "l2_grid": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]}
    assert variant_labels({"a": default, "b": short, "c": long}) == {
        "a": "l2_grid=default", "b": "l2_grid=[100.0]",
        "c": "l2_grid=[0.001 .. 100.0] (6 values)"}  # a long list: its ends, where they tell
    same_ends = {**base, "l2_grid": [0.001, 1.0, 100.0, 100.0, 100.0, 100.0]}
    assert variant_labels({"c": long, "d": same_ends}) == {
        "c": "l2_grid=[0.001, 0.01, 0.1, 1.0, 10.0, 100.0]",
        "d": "l2_grid=[0.001, 1.0, 100.0, 100.0, 100.0, 100.0]"}
    # finetuning: the recipe's settings, not where it ran or what it learnt; a hash only
    # where none tells two recipes apart (an LP-FT head of an earlier solver)
    tuned = {"recipe": "r1", "lr": 0.001, "epochs": 5, "device": "cpu", "history": [0.5],
             "best_epoch": 2}
    other = {**tuned, "recipe": "r2", "lr": 0.05, "device": "cuda", "history": [0.7]}
    assert variant_labels({"r1": tuned, "r2": other}) == {"r1": "lr=0.001", "r2": "lr=0.05"}
    assert variant_labels({"r1": tuned, "r3": {**tuned, "recipe": "r3"}}) == {
        "r1": "~r1", "r3": "~r3"}


def _table_rows(out: str, title: str) -> list[list[str]]:
    """The cells of each row of the table titled ``title`` in ``out`` (printed unwrapped)."""
    lines = out.split(title, 1)[1].split("└", 1)[0].splitlines()
    return [[c.strip() for c in line.strip("│").split("│")] for line in lines
            if line.startswith("│")]


def test_every_row_says_in_words_what_sets_it_apart_in_results_and_the_report(
        capsys, monkeypatch, extracted, tmp_path):
    """One pair of backbones embedded by two pixel paths (PIL; resized on the device), each
    pair fused at two fractions, and a probe at the default L2 grid beside another: every
    row of ``results`` and of the report says in words what sets it apart (no bare hash),
    and rows come ordered by fraction."""
    from rich.console import Console

    from featstore.report.collect import collect

    monkeypatch.setattr("featstore.cli._shared.out", Console(width=1000, emoji=False))
    keys = {}
    for resize in ("cpu", "device"):
        code, out, err = cli(capsys, "extract", *extracted, "-b", TINY, "-b", TINY_VIT,
                             "--image-size", str(SIZE), "--resize", resize, "--json")
        assert code == 0, err
        keys[resize] = [r["key"][:12] for r in json.loads(out)]
        code, _, err = cli(capsys, "fuse", *extracted, "-b", keys[resize][0], "-b",
                           keys[resize][1], "--fractions", "1,0.5", "--bootstrap", "10",
                           "--heads-dir", str(tmp_path / "heads"))
        assert code == 0, err
    for grid in ((), ("--l2-grid", "100")):
        _probe(capsys, extracted, *grid)
    code, out, _ = cli(capsys, "results", *extracted)
    assert code == 0 and not re.search(r"[~#][0-9a-f]{6}", out), out
    probes = _table_rows(out, "probes on test")
    assert [row[1] for row in probes] == ["linear l2_grid=[100.0]", "linear l2_grid=default"]
    assert {row[0] for row in probes} == {f"timm:test_resnet/{SIZE}px@random [PIL]"}
    fused = _table_rows(out, "fusion on test")
    pairs = {f"timm:test_resnet/{SIZE}px@random [{p}]+timm:test_vit/{SIZE}px@random [{p}]"
             for p in ("PIL", "torch resize")}
    assert {row[1] for row in fused} == pairs, out
    order = [(row[1], row[0]) for row in fused]  # rows of one fusion and method together,
    assert [row[2] for row in fused] == ["0.5", "1"] * (len(fused) // 2), out  # by fraction
    assert len(set(order)) == len(fused) // 2 and order[::2] == order[1::2], out
    assert [row[0] for row in fused[:6:2]] == [
        "dvme-softmax", "concat", f"single:timm:test_resnet/{SIZE}px@random [PIL]"], out

    [report] = collect(FeatureStore(extracted[3]))
    named = {(row.backbone, row.method) for row in report.rows}
    assert {("test_resnet [PIL]", "linear l2_grid=[100.0]"),
            ("test_resnet [PIL]", "linear l2_grid=default"),
            ("test_resnet [PIL] + test_vit [PIL]", "dvme-softmax"),
            ("test_resnet [torch resize] + test_vit [torch resize]", "dvme-softmax")} <= named
    assert len(named) == len(report.rows) and report.legend == []


def test_a_hash_in_a_row_name_comes_with_a_line_saying_what_it_is():
    """Where no word tells two sets of one alias apart (their key's start) or two settings
    (a configuration hash), the table says under it what the hash is."""
    from types import SimpleNamespace

    from featstore.probe import ProbeRecord
    from featstore.report.tables import KEY_LEGEND, probe_tables, set_names
    from featstore.runkeys import VARIANT_LEGEND

    sets = [SimpleNamespace(key=k * 64, alias="a", pixels="PIL", precision="fp32",
                            dtype="float32") for k in "12"]
    names = set_names(sets + [SimpleNamespace(key="3" * 64, alias="a", pixels="torch resize",
                                              precision="fp32", dtype="float32")])
    assert names == {"1" * 64: "a [PIL] #11111111", "2" * 64: "a [PIL] #22222222",
                     "3" * 64: "a [torch resize]"}

    def record(key: str, config: dict) -> ProbeRecord:
        return ProbeRecord(dataset="d", task="binary", metric="auc", value=0.9, primary=True,
                           ci_low=0.8, ci_high=1.0, fraction=1.0, seed=0, n_train=10, n_val=5,
                           n_test=5, train_ids_sha256="t", run_id="r", backbone="a", key=key,
                           probe="finetune", val_source="val split", config=config)

    one = {"recipe": "aaaaaaaa", "lr": 0.1}
    [table] = probe_tables([record("1" * 64, one), record("2" * 64, one)], names)
    assert table.caption == KEY_LEGEND
    [table] = probe_tables([record("3" * 64, one),
                            record("3" * 64, {**one, "recipe": "bbbbbbbb"})], names)
    assert table.caption == VARIANT_LEGEND
    [table] = probe_tables([record("3" * 64, one)], names)
    assert table.caption is None


def test_a_row_says_default_for_exactly_the_probe_defaults():
    """``l2_grid=default`` is worded from the defaults the probe declares (read from below
    the probes, so the two must stay one)."""
    from dataclasses import fields

    from featstore.probe.config import ProbeConfig
    from featstore.runkeys import _list_defaults

    declared = {f.name: json.dumps(list(f.default)) for f in fields(ProbeConfig)
                if isinstance(f.default, tuple)}
    assert _list_defaults() == declared
