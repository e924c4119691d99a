"""Finetuning: the probes' protocol run for run (same train subset, val-only selection, same
metrics), persisted and listed beside the probes, and resumable after SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featstore.data import load_dataset
from featstore.finetune import Classifier
from featstore.finetune.model import freeze
from featstore.store import FeatureStore
from tests.conftest import SIZE, TINY, cli

REPO = Path(__file__).resolve().parents[2]
RECIPE = ["-b", TINY, "--image-size", str(SIZE), "--epochs", "3", "--batch-size", "8",
          "--lr", "0.01", "--bootstrap", "20"]


def test_same_train_rows_as_the_probe_and_listed_beside_it(capsys, npz_file, store_dir):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    grid = ["--fractions", "0.5,1", "--seeds", "2"]
    code, _, err = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE))
    assert code == 0, err
    code, out, err = cli(capsys, "probe", *data, *grid, "--bootstrap", "20", "--json")
    assert code == 0, err
    probe = {(r["fraction"], r["seed"]): r["train_ids_sha256"] for r in json.loads(out)}
    code, out, err = cli(capsys, "finetune", *data, *grid, *RECIPE, "--json")
    assert code == 0, err
    tuned = json.loads(out)
    assert {(r["fraction"], r["seed"]): r["train_ids_sha256"] for r in tuned} == probe
    assert {r["probe"] for r in tuned} == {"finetune"} and not any(r["cached"] for r in tuned)
    best = tuned[0]["config"]["best_epoch"]
    assert 1 <= best <= 3 and f"best epoch {best}/3," in tuned[0]["hyperparameter"]
    code, out, _ = cli(capsys, "finetune", *data, *grid, *RECIPE, "--json")
    assert all(r["cached"] for r in json.loads(out))  # persisted: read back
    code, out, _ = cli(capsys, "results", *data, "--json")
    listed = json.loads(out)
    assert {r["probe"] for r in listed} == {"linear", "finetune"}
    code, out, _ = cli(capsys, "results", *data)
    assert "finetune" in out and "linear" in out


def test_a_dataset_only_finetuned_is_listed(capsys, npz_file, store_dir):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    code, _, err = cli(capsys, "finetune", *data, *RECIPE, "--epochs", "1", "--warmup-epochs",
                       "0")
    assert code == 0, err
    code, out, _ = cli(capsys, "results", *data, "--json")
    assert code == 0 and {r["probe"] for r in json.loads(out)} == {"finetune"}


KILL_AT_CHECKPOINT = """
import os, signal, sys
from featstore.store.objects import StoreObjects
real = StoreObjects.put
seen = [0]
def put(self, key, data):
    real(self, key, data)
    if key.endswith("/checkpoint.pt"):
        seen[0] += 1
        if seen[0] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)  # right after epoch N's checkpoint
StoreObjects.put = put
from featstore.cli import main
main(sys.argv[2:])
"""


def _featstore(*args: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = ([sys.executable, "-c", KILL_AT_CHECKPOINT, str(kill_after)] if kill_after
           else [sys.executable, "-m", "featstore"])
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_uninterrupted_result(npz_file, tmp_path):
    args = ["finetune", "--data", str(npz_file), *RECIPE, "--epochs", "4", "--json"]
    ref = _featstore(*args, "--store", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    store = str(tmp_path / "store")
    killed = _featstore(*args, "--store", store, kill_after=2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ds = FeatureStore(store).dataset(load_dataset(npz_file))
    [run] = ds.finetune_runs.all()
    assert run["status"] == "running"
    resumed = _featstore(*args, "--store", store)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch 1:" not in resumed.stderr and "epoch 3:" in resumed.stderr  # from epoch 3
    want, got = json.loads(ref.stdout), json.loads(resumed.stdout)
    assert [(r["metric"], r["value"], r["ci_low"]) for r in got] == [
        (r["metric"], r["value"], r["ci_low"]) for r in want]
    assert got[0]["config"]["best_epoch"] == want[0]["config"]["best_epoch"]
    losses = [[(h["epoch"], h["train_loss"], h["val"]) for h in r[0]["config"]["history"]]
              for r in (want, got)]
    assert losses[0] == losses[1]  # epochs 3 and 4 trained exactly as without the kill
    assert not any(k.endswith("checkpoint.pt") for k in FeatureStore(store).objects.list(
        "_checkpoints"))  # a finished run keeps its best weights, not its resume state


def test_freeze_until_freezes_the_stem_and_first_stages(tmp_path):
    import timm

    model = Classifier(timm.create_model("test_resnet", num_classes=0), 8, 1)
    freeze(model, "layer2")
    frozen = {n.split(".")[0] for n, p in model.backbone.named_parameters()
              if not p.requires_grad}
    trained = {n.split(".")[0] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}
    assert trained == {"layer3", "layer4"} and model.head.weight.requires_grad
    with pytest.raises(Exception, match="--freeze-until 'layer9'.*top-level: conv1"):
        freeze(model, "layer9")


def test_model_and_head_shapes_follow_the_task(tmp_path):
    import timm

    backbone = timm.create_model("test_resnet", num_classes=0)
    x = torch.zeros(2, 3, SIZE, SIZE)
    assert Classifier(backbone, backbone.num_features, 5)(x).shape == (2, 5)
    assert torch.isfinite(Classifier(backbone, backbone.num_features, 1)(x)).all()


def test_a_finetuned_network_is_a_backbone(capsys, npz_file, store_dir):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    code, out, err = cli(capsys, "finetune", *data, *RECIPE, "--epochs", "2", "--json")
    assert code == 0, err
    run_id = json.loads(out)[0]["run_id"]
    tuned = f"finetuned:{run_id[:10]}"
    code, out, err = cli(capsys, "extract", *data, "-b", tuned, "-b", TINY, "--image-size",
                         str(SIZE), "--json")
    assert code == 0, err
    finetuned, base = json.loads(out)
    assert finetuned["key"] != base["key"]  # its own weights, its own key
    m = load_dataset(npz_file)
    ds = FeatureStore(store_dir).dataset(m)
    a, b = (ds.embedding_set(r["key"]).read() for r in (finetuned, base))
    assert a.shape == b.shape and not np.allclose(a, b)
    prov = ds.embedding_set(finetuned["key"]).attrs["provenance"]
    assert prov["weights_sha256"] == FeatureStore(store_dir).dataset(m).finetune_runs.all()[0][
        "finetuned_sha256"]
    code, out, err = cli(capsys, "probe", *data, "-b", tuned, "--bootstrap", "10", "--json")
    assert code == 0 and json.loads(out)[0]["key"] == finetuned["key"], err
    code, _, err = cli(capsys, "extract", *data, "-b", "finetuned:ffff0000", "--image-size",
                       str(SIZE))
    assert code == 1 and "no finetuning run 'ffff0000'" in err


def test_an_unfinished_run_is_not_a_backbone(npz_file, tmp_path):
    store = str(tmp_path / "store")
    args = ["finetune", "--data", str(npz_file), *RECIPE, "--json", "--store", store]
    killed = _featstore(*args, kill_after=1)
    assert killed.returncode == -9
    ds = FeatureStore(store).dataset(load_dataset(npz_file))
    [run_id] = ds.finetune_runs.by_id()
    out = _featstore("extract", "--data", str(npz_file), "--store", store, "-b",
                     f"finetuned:{run_id[:12]}")
    assert out.returncode == 1 and "has not finished" in out.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_one_process(npz_file, tmp_path):
    """DDP over 2 gloo ranks: each batch split, the loss weighted to the whole batch, val and
    test evaluated once per row: the same run as one process, within float tolerance (a
    LayerNorm ViT: no batch statistics that a split batch would change)."""
    args = ["finetune", "--data", str(npz_file), "-b", "timm:test_vit@random", "--image-size",
            str(SIZE), "--epochs", "2", "--batch-size", "8", "--lr", "0.003",
            "--bootstrap", "20", "--json"]
    one = _featstore(*args, "--store", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", "-m", "featstore", *args, "--store",
                          str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    want, got = json.loads(one.stdout), json.loads(two.stdout)  # rank 0 reports
    assert [r["metric"] for r in got] == [r["metric"] for r in want]
    assert [r["value"] for r in got] == pytest.approx([r["value"] for r in want], abs=1e-6)
    assert got[0]["n_test"] == want[0]["n_test"] and got[0]["config"]["world_size"] == 2
    losses = [[h["train_loss"] for h in r[0]["config"]["history"]] for r in (want, got)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_lp_ft_starts_the_head_from_the_cached_linear_probe(capsys, npz_file, store_dir):
    """With (almost) no learning, a run started from the probe predicts as the probe does:
    the head is the probe, its standardisation folded in (a LayerNorm ViT, so training mode
    changes no running statistics)."""
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    vit = ["-b", "timm:test_vit@random", "--image-size", str(SIZE)]
    lpft = ["finetune", *data, *vit, "--init-head", "probe", "--epochs", "1",
            "--warmup-epochs", "0", "--lr", "1e-12", "--bootstrap", "20", "--json"]
    code, _, err = cli(capsys, *lpft)
    assert code == 1 and "--init-head probe: no linear probe" in err
    code, _, err = cli(capsys, "extract", *data, *vit)
    assert code == 0, err
    code, out, err = cli(capsys, "probe", *data, *vit, "--bootstrap", "20", "--json")
    assert code == 0, err
    probe = {r["metric"]: r["value"] for r in json.loads(out)}
    code, out, err = cli(capsys, *lpft)
    assert code == 0, err
    tuned = {r["metric"]: r["value"] for r in json.loads(out)}
    assert tuned["auc"] == pytest.approx(probe["auc"], abs=1e-6)
    assert tuned["accuracy"] == pytest.approx(probe["accuracy"])
    lpft_run = json.loads(out)[0]["run_id"]
    code, out, _ = cli(capsys, "finetune", *data, *vit, "--epochs", "1", "--warmup-epochs",
                       "0", "--lr", "1e-12", "--bootstrap", "20", "--json")
    fresh = json.loads(out)
    assert fresh[0]["run_id"] != lpft_run  # the head's start is part of the run's identity
    assert fresh[0]["config"]["init_head"] == "fresh"


def test_a_probe_head_that_does_not_fit_is_refused():
    import timm

    from featstore.errors import FinetuneError
    from featstore.finetune.model import fold_probe_head

    backbone = timm.create_model("test_resnet", num_classes=0)
    d = backbone.num_features
    model = Classifier(backbone, d, 3)
    rng = np.random.default_rng(0)
    head = {"coef": rng.normal(size=(d, 2)), "intercept": np.zeros(2), "mean": np.ones(d),
            "scale": np.full(d, 2.0)}
    fold_probe_head(model, head, "p")  # 2 of 3 classes seen in the probe's train rows
    f = torch.as_tensor(rng.normal(size=(4, d)), dtype=torch.float32)
    want = ((f.numpy() - 1) / 2) @ head["coef"]
    got = model.head(f).detach().numpy()
    assert np.allclose(got[:, :2], want, atol=1e-4) and np.allclose(got[:, 2], 0)
    for bad in ({**head, "coef": rng.normal(size=(d, 4))}, {**head, "coef": np.zeros((d + 1, 1))}):
        with pytest.raises(FinetuneError, match="does not fit|network gives"):
            fold_probe_head(model, bad, "p")


def test_layer_decay_gives_each_layer_its_own_rate():
    import timm

    from featstore.finetune import FinetuneConfig
    from featstore.finetune.model import param_groups

    backbone = timm.create_model("test_vit", num_classes=0)
    model = Classifier(backbone, backbone.num_features, 1)
    groups = param_groups(model, FinetuneConfig(layer_decay=0.5))
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) > 3 and scales[-1] == 1.0 and scales[0] < 0.05
    head = {id(p) for p in model.head.parameters()}
    assert all(g["lr_scale"] == 1.0 for g in groups if {id(p) for p in g["params"]} & head)
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())  # every parameter, once


def _tiny_npz(tmp_path, val_one_class=False):
    from tests.conftest import make_medmnist

    path = make_medmnist(tmp_path / "t.npz", n=(40, 12, 12))
    if val_one_class:
        arrays = dict(np.load(path))
        arrays["val_labels"][:] = 0
        np.savez(path, **arrays)
    return path


def test_a_single_class_val_still_finishes(capsys, tmp_path):
    data = _tiny_npz(tmp_path, val_one_class=True)
    code, out, err = cli(capsys, "finetune", "--data", str(data), "--store",
                         str(tmp_path / "s"), *RECIPE, "--epochs", "2", "--json")
    assert code == 0, err
    [rec] = [r for r in json.loads(out) if r["primary"]]
    assert rec["config"]["best_epoch"] == 1  # no finite val: the first
    assert rec["chosen_on_val"] is False and "not chosen" in rec["hyperparameter"]
    code, out, err = cli(capsys, "results", "--data", str(data), "--store", str(tmp_path / "s"))
    assert "val could not choose" in err + out


def test_a_single_class_val_is_said_by_the_probe(capsys, tmp_path):
    data = _tiny_npz(tmp_path, val_one_class=True)
    args = ["--data", str(data), "--store", str(tmp_path / "s")]
    code, _, err = cli(capsys, "extract", *args, "-b", TINY, "--image-size", str(SIZE))
    assert code == 0, err
    code, out, err = cli(capsys, "probe", *args, "--probe", "linear,knn", "--bootstrap", "10",
                         "--json")
    assert code == 0, err
    prim = [r for r in json.loads(out) if r["primary"]]
    assert [r["chosen_on_val"] for r in prim] == [False, False]
    assert all("not chosen: val metric undefined" in r["hyperparameter"] for r in prim)
    code, out, err = cli(capsys, "probe", *args, "--probe", "linear,knn", "--bootstrap", "10")
    assert "val could not choose" in err + out


def test_accumulated_micro_batches_equal_one_big_batch(capsys, tmp_path):
    data = _tiny_npz(tmp_path)  # 40 train rows
    base = ["finetune", "--data", str(data), "-b", "timm:test_vit@random", "--image-size",
            str(SIZE), "--optimizer", "sgd", "--lr", "0.5", "--warmup-epochs", "0",
            "--epochs", "2", "--bootstrap", "10", "--json"]
    losses = []
    for i, (bs, acc) in enumerate(((40, 1), (8, 5), (8, 10))):
        code, out, err = cli(capsys, *base, "--batch-size", str(bs), "--accum-steps", str(acc),
                             "--store", str(tmp_path / f"s{i}"))
        assert code == 0, err
        losses.append([h["train_loss"] for h in json.loads(out)[0]["config"]["history"]])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert losses[2] == pytest.approx(losses[0], rel=1e-4)  # a short group is not scaled down


def test_runs_of_different_recipes_are_different_rows(capsys, tmp_path):
    data = _tiny_npz(tmp_path)
    args = ["finetune", "--data", str(data), "--store", str(tmp_path / "s"), *RECIPE,
            "--epochs", "1"]
    for lr in ("0.001", "0.05"):
        code, _, err = cli(capsys, *args, "--lr", lr)
        assert code == 0, err
    code, out, _ = cli(capsys, "results", "--data", str(data), "--store", str(tmp_path / "s"))
    rows = [line for line in out.splitlines() if "finetune" in line]
    assert len(rows) == 2, out  # two recipes, not one row of two "seeds"


def test_a_damaged_checkpoint_is_one_line_and_a_killed_writes_temp_is_cleared(capsys, npz_file,
                                                                              tmp_path):
    args = ["finetune", "--data", str(npz_file), *RECIPE, "--epochs", "3", "--json"]
    store = str(tmp_path / "store")
    killed = _featstore(*args, "--store", store, kill_after=1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    [ckpt] = [p for p in Path(store).rglob("checkpoint.pt")]
    stale = ckpt.with_name("checkpoint.pt.999999999-0123abcd.tmp")  # a writer long dead
    stale.write_bytes(b"half a checkpoint")
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 3])  # truncated
    code, _, err = cli(capsys, *args, "--store", store)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "checkpoint" in lines[0] and "damaged" in lines[0]
    assert "--recompute" in lines[0] and "internal" not in err
    assert not stale.exists()
    ckpt.write_bytes(good)  # the real one back: the run resumes and finishes
    code, out, err = cli(capsys, *args, "--store", store)
    assert code == 0 and json.loads(out)[0]["config"]["history"][0]["epoch"] == 1, err


def _png_dataset(tmp_path: Path, bad: str = "t3") -> Path:
    """24 small PNGs (train 16, val 4, test 4), row ``bad`` not an image at all."""
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = ["id,split,path,label"]
    for i in range(24):
        split, name = ("train", f"r{i}") if i < 16 else (
            ("val", f"v{i}") if i < 20 else ("test", f"t{i - 20}"))
        path = tmp_path / f"{name}.png"
        if name == bad:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(path)
        lines.append(f"{name},{split},{path.name},{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.csv"


def test_an_unreadable_image_stops_finetuning_before_epoch_1_or_is_skipped(capsys, tmp_path):
    data = _png_dataset(tmp_path)
    args = ["finetune", "--data", str(data), "--store", str(tmp_path / "s"), *RECIPE,
            "--epochs", "1", "--warmup-epochs", "0"]
    code, _, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "'t3'" in lines[0] and "t3.png" in lines[0]
    assert "epoch 1" not in err and "BytesIO" not in err  # named before any training
    code, out, err = cli(capsys, *args, "--on-error", "skip", "--json")
    assert code == 0, err
    rec = json.loads(out)[0]
    assert rec["n_excluded"] == 1 and rec["n_test"] == 3


def test_an_lp_ft_run_is_keyed_by_the_solver_of_the_probe_it_starts_from(monkeypatch):
    """A finetuning run that starts from a linear probe (LP-FT) gets another id and recipe
    when the probe's solver changes, so a run started from an earlier solver's head is never
    read back as today's; a fresh head's run keeps its id."""
    import featstore.finetune.config as fc
    from featstore.finetune.config import FinetuneConfig

    lpft, fresh = FinetuneConfig(init_head="probe"), FinetuneConfig()
    before = [(c.run_id("m", "val split"), c.recipe()) for c in (lpft, fresh)]
    monkeypatch.setattr(fc, "LINEAR_SOLVER", "lbfgs-next")
    after = [(c.run_id("m", "val split"), c.recipe()) for c in (lpft, fresh)]
    assert before[0][0] != after[0][0] and before[0][1] != after[0][1]
    assert before[1] == after[1]


def test_an_earlier_solvers_lp_ft_run_is_listed_until_made_again_then_hidden(
        capsys, monkeypatch, npz_file, store_dir):
    """As probe and fusion runs: an LP-FT run whose head an earlier solver fitted stays in
    ``results`` (its own recipe, so never averaged with today's) until the same run is made
    with the current solver; then only the current one is listed."""
    import featstore.finetune.config as fc

    data = ["--data", str(npz_file), "--store", str(store_dir)]
    vit = ["-b", "timm:test_vit@random", "--image-size", str(SIZE)]
    for args in (["extract", *data, *vit], ["probe", *data, *vit, "--bootstrap", "10"]):
        code, _, err = cli(capsys, *args)
        assert code == 0, err
    lpft = ["finetune", *data, *vit, "--init-head", "probe", "--epochs", "1",
            "--warmup-epochs", "0", "--bootstrap", "10", "--json"]

    def listed() -> set[tuple[str, str]]:
        code, out, err = cli(capsys, "results", *data, "--json")
        assert code == 0, err
        return {(r["run_id"], r["config"]["recipe"]) for r in json.loads(out)
                if r.get("probe") == "finetune"}

    with monkeypatch.context() as m:
        m.setattr(fc, "LINEAR_SOLVER", "lbfgs-v1")  # as if fitted before the current solver
        code, out, err = cli(capsys, *lpft)
        assert code == 0, err
        old = json.loads(out)[0]
    assert listed() == {(old["run_id"], old["config"]["recipe"])}
    code, out, err = cli(capsys, *lpft)  # the same run, today: made again, not read back
    assert code == 0, err
    new = json.loads(out)[0]
    assert new["run_id"] != old["run_id"] and not new.get("cached")
    assert listed() == {(new["run_id"], new["config"]["recipe"])}

    # never hidden: a run whose settings this version does not know (a newer featstore's),
    # and a record without its config (listed, as before, not an error)
    from types import SimpleNamespace

    from featstore.finetune import stored_finetune_records

    ds = FeatureStore(str(store_dir)).dataset(load_dataset(npz_file))
    runs = {r["records"][0]["run_id"]: r for r in ds.finetune_runs.all()}
    earlier, current = runs[old["run_id"]], runs[new["run_id"]]

    def shown(*variants) -> list[str]:
        stub = SimpleNamespace(finetune_runs=SimpleNamespace(all=lambda: list(variants)))
        return sorted({r.run_id for r in stored_finetune_records(stub)})

    def edited(run, **config):
        recs = [{**r, "config": {**r["config"], **config}} for r in run["records"]]
        return {**run, "records": recs}

    assert shown(earlier, current) == [new["run_id"]]
    assert shown(edited(earlier, label_smoothing=0.1), current) == sorted(runs)
    bare = {**earlier, "records": [{k: v for k, v in r.items() if k != "config"}
                                   for r in earlier["records"]]}
    assert shown(bare, current) == sorted(runs)
    assert shown(edited(earlier, init_head="fresh"), current) == sorted(runs)
