"""Pipelines: a TOML grid validated with named errors, expanded into steps that skip what the
store holds, run end to end (local pool and submitit's executor), a failure isolated and
named; and the report written from the store, its figures decoded and their panels counted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from featstore.pipeline import PipelineError, load_pipeline
from featstore.report.figures import FRAME
from tests.conftest import cli, make_medmnist

REPO = Path(__file__).resolve().parents[2]

GRID = """
name = "tiny"
store = "{store}"
fractions = [0.5, 1.0]
seeds = 2
bootstrap = 20

[vars]
root = "{root}"

[datasets]
alpha = "${{root}}/alpha.npz"
beta = {{ data = "${{root}}/beta.npz", task = "binary" }}

[backbones]
resnet = {{ spec = "timm:test_resnet@random", image_size = 32 }}
convnext = {{ spec = "timm:test_convnext@random", image_size = 32 }}

[extract]
device = "cpu"
workers = 0
batch_size = 32
"""
PROBE = """
[probe]
probes = ["linear", "knn"]
"""
FUSE = """
[fuse]
backbones = ["resnet", "convnext"]
dim = 16
fractions = [1.0]
"""
FINETUNE = """
[finetune]
backbones = ["resnet"]
fractions = [1.0]
seeds = 1
epochs = 1
batch_size = 16
embed = true
"""


def write(tmp_path: Path, data_root: Path, *parts: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(GRID.format(store=tmp_path / "store", root=data_root) + "".join(parts))
    return path


def frames(png: Path) -> int:
    """Panels in a figure: connected outlines drawn in the report's frame colour (every
    panel is framed in it, nothing else is drawn in it), larger than 40 pixels a side."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    target = np.array([int(FRAME[i:i + 2], 16) for i in (1, 3, 5)])
    mask = (np.abs(rgb - target).sum(-1) <= 6)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = ndimage.find_objects(labels)
    return sum((b[0].stop - b[0].start) > 40 and (b[1].stop - b[1].start) > 40
               for b in boxes)


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize("patch, message", [
    (("seeds = 2", "seeds = 2\nsedes = 3"), "unknown key 'sedes'"),
    (("[extract]", "[fusion]\ndim = 3\n[extract]"), "unknown stage or table [fusion]"),
    (("[extract]", "[extract]\nbatchsize = 3"), "[extract] unknown key 'batchsize'"),
    (("fractions = [0.5, 1.0]", "fractions = [0.5, 1.5]"),
     "fractions = 1.5: expected values in (0, 1]"),
    (("fractions = [0.5, 1.0]", "fractions = [0.0]"), "fractions = 0.0: expected values in (0, 1]"),
    (("timm:test_convnext@random", "timm:no_such_net@random"),
     "[backbones] convnext: backbone 'timm:no_such_net@random': timm has no model"),
    (("timm:test_convnext@random", "resnet-9000"), "unknown backbone 'resnet-9000'"),
    (("/beta.npz", "/gamma.npz"), "[datasets] beta:"),
    (("${root}/alpha.npz", "${rooot}/alpha.npz"), "${rooot} is not a variable of [vars]"),
    (("seeds = 2", "seeds = 0"), "seeds = 0: expected at least one seed"),
    (("image_size = 32 }", "image_size = \"big\" }"), "[backbones] resnet: unknown or bad key"),
    (("batch_size = 32", "batch_size = 0"), "[extract] batch_size = 0: expected at least 1"),
    (("fractions = [0.5, 1.0]", "fractions = [0.5, 0.5]"),
     "fractions = 0.5: repeated (expected each value once)"),
    (('probes = ["linear", "knn"]', 'probes = ["linear"]\nks = [0, 5]'),
     "[probe] ks = 0: expected at least 1"),
    (('probes = ["linear", "knn"]', 'probes = "linear"'), "[probe] probes = 'linear'"),
])
def test_a_bad_pipeline_file_is_one_error_naming_the_file_and_key(tmp_path, data_root, patch,
                                                                   message):
    path = write(tmp_path, data_root, PROBE)
    text = path.read_text()
    assert patch[0] in text
    path.write_text(text.replace(patch[0], patch[1], 1))
    with pytest.raises(PipelineError) as e:
        load_pipeline(path)
    assert str(path) in str(e.value) and message in str(e.value), str(e.value)


def test_stage_lists_name_only_declared_backbones_and_fusion_needs_two(tmp_path, data_root):
    path = write(tmp_path, data_root, PROBE.replace('probes = ["linear", "knn"]',
                                                   'backbones = ["resnet", "vit"]'))
    with pytest.raises(PipelineError, match=r"\[probe\] backbones: unknown backbone 'vit'"):
        load_pipeline(path)
    path = write(tmp_path, data_root, FUSE.replace('["resnet", "convnext"]', '["resnet"]'))
    with pytest.raises(PipelineError, match="fusion takes 2 to 8 backbones, got 1"):
        load_pipeline(path)
    path = write(tmp_path, data_root, PROBE.replace('"knn"]', '"svm"]'))
    with pytest.raises(PipelineError, match=r"\[probe\] probes = 'svm': expected one of"):
        load_pipeline(path)


def test_set_changes_a_stage_but_never_adds_one(tmp_path, data_root):
    path = write(tmp_path, data_root, PROBE)
    with pytest.raises(PipelineError, match=r"--set fuse.dim: the file has no \[fuse\]"):
        load_pipeline(path, sets={"fuse.dim": 8})


def test_lp_ft_needs_the_linear_probes_it_starts_from(tmp_path, data_root):
    lpft = FINETUNE.replace("embed = true", 'init_head = "probe"')
    with pytest.raises(PipelineError, match="needs a linear probe of resnet"):
        load_pipeline(write(tmp_path, data_root, lpft))
    knn_only = PROBE.replace('"linear", "knn"', '"knn"')
    with pytest.raises(PipelineError, match="needs a linear probe of resnet"):
        load_pipeline(write(tmp_path, data_root, knn_only, lpft))
    with pytest.raises(PipelineError, match="fractions and seeds must be among"):
        load_pipeline(write(tmp_path, data_root, PROBE, lpft.replace(
            "fractions = [1.0]", "fractions = [0.25]")))
    assert load_pipeline(write(tmp_path, data_root, PROBE, lpft)).stages["finetune"]


def test_set_store_and_environment_override_the_file(tmp_path, data_root, monkeypatch):
    path = write(tmp_path, data_root, PROBE, FUSE)
    other = tmp_path / "elsewhere"
    other.mkdir()
    make_medmnist(other / "alpha.npz")
    make_medmnist(other / "beta.npz")
    monkeypatch.setenv("FEATSTORE_ROOT", str(other))
    pipe = load_pipeline(path, store="s3://bucket/team", sets={
        "seeds": 3, "probe.probes": ["knn"], "fuse.fractions": [0.25, 1]})
    assert pipe.store == "s3://bucket/team"
    assert [d.data for d in pipe.datasets] == [f"{other}/alpha.npz", f"{other}/beta.npz"]
    assert pipe.stages["probe"]["seeds"] == [0, 1, 2]  # the file's top level, overridden
    assert pipe.stages["probe"]["probes"] == ["knn"]
    assert pipe.stages["fuse"]["fractions"] == [0.25, 1.0]
    assert pipe.stages["fuse"]["seeds"] == [0, 1, 2]
    pipe = load_pipeline(path, sets={"root": str(data_root)})  # --set beats the environment
    assert pipe.datasets[0].data == f"{data_root}/alpha.npz"


# ------------------------------------------------------------------------- run + report


def _in_fresh_process(*commands: list[str]) -> tuple[list[str], list[str]]:
    """Each featstore command's stdout, run one after another in a new Python process, and
    which of torch, timm, torchvision and sklearn that process had imported by the end."""
    import os
    import subprocess
    import sys

    script = (
        "import contextlib, io, json, sys\n"
        "from featstore.cli import main\n"
        "outs = []\n"
        f"for argv in {json.dumps(commands)}:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert not e.code, (argv, e.code)\n"
        "    outs.append(buf.getvalue())\n"
        "heavy = [m for m in ('torch', 'timm', 'torchvision', 'sklearn') if m in sys.modules]\n"
        "print(json.dumps({'outs': outs, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    return last["outs"], last["heavy"]


@pytest.mark.slow
def test_run_does_the_grid_once_then_nothing_and_report_draws_it(tmp_path, data_root, capsys):
    path = write(tmp_path, data_root, PROBE, FUSE, FINETUNE)
    code, out, err = cli(capsys, "run", str(path), "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    ids = [s["id"] for s in plan]
    assert ids[:7] == ["extract alpha", "probe alpha resnet", "probe alpha convnext",
                       "fuse alpha", "finetune alpha resnet", "extract alpha resnet-ft",
                       "probe alpha resnet-ft"]
    assert len(ids) == 14 and not any(s["cached"] for s in plan)
    assert plan[1]["deps"] == ["extract alpha"] and plan[5]["deps"] == ["finetune alpha resnet"]

    code, out, err = cli(capsys, "run", str(path), "--json", "--jobs", "2")
    assert code == 0, err
    outcomes = {o["step"]: o for o in json.loads(out)}
    assert {o["status"] for o in outcomes.values()} == {"done"}, outcomes
    assert outcomes["probe alpha resnet"]["runs"] == 8  # 2 probes x 2 fractions x 2 seeds
    assert outcomes["fuse beta"]["runs"] == 2 * 4  # 2 seeds x (dvme, concat, 2 singles)
    assert outcomes["extract alpha"]["runs"] == 2

    # warm: nothing to do; planning it (probe, fusion and finetune run ids) and reading the
    # runs back (results) load neither torch nor timm: seconds of imports a command saved.
    # A finetuned model's identity is remembered only from a build that read its weights
    # file settled (changed over RACY_NS before): its extract may have started sooner, so
    # one plan after the file settled builds it (in-process) and remembers it
    import time

    from featstore._hashing import RACY_NS

    written = max(f.stat().st_ctime_ns for f in (tmp_path / "store").rglob("backbone.pt"))
    while time.time_ns() - written <= RACY_NS:
        time.sleep(0.1)
    code, _, err = cli(capsys, "run", str(path), "--json")
    assert code == 0, err
    outs, heavy = _in_fresh_process(["run", str(path), "--json"], [
        "results", "--data", str(data_root / "alpha.npz"), "--store", str(tmp_path / "store"),
        "--json"])
    assert {o["status"] for o in json.loads(outs[0])} == {"cached"}
    records = json.loads(outs[1])
    assert {r.get("probe", r.get("method")) for r in records} >= {
        "linear", "knn", "finetune", "dvme-softmax", "concat"}
    assert heavy == []

    report = tmp_path / "report"
    code, out, err = cli(capsys, "report", str(path), "-o", str(report))
    assert code == 0, err
    names = sorted(p.name for p in report.iterdir())
    assert names == ["attention.png", "fractions.png", "map.png", "report.html", "report.md"]
    assert frames(report / "fractions.png") == 2  # a panel per dataset
    assert frames(report / "attention.png") == 4  # per dataset: overall, per class
    assert frames(report / "map.png") == 2
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    assert "## alpha (binary)" in md and "## beta (binary)" in md
    # rows: 2 backbones x 2 probes + finetune + finetuned model x 2 probes + dvme + concat
    alpha = md.split("## alpha")[1].split("### Provenance")[0]
    rows = [ln for ln in alpha.splitlines() if ln.startswith("| ") and "method" not in ln]
    assert len(rows) == 9, alpha
    assert sum("(best)" in ln for ln in rows) >= 2  # one per fraction column at least
    assert re.search(r"\| test_resnet \(random\) \| linear \| (\*\*)?[0-9.]+ ± [0-9.]+ "
                     r"\(n=2\) \[[0-9.]+, [0-9.]+\]", alpha), alpha
    assert "RANDOM WEIGHTS" in md and "FINETUNED FROM RANDOM WEIGHTS" in md
    assert html.count("data:image/png;base64,") == 3 and "<img" in html
    assert "src='fractions.png'" not in html  # one self-contained file

    # one dataset only, by --data: one panel
    code, out, err = cli(capsys, "report", "--store", str(tmp_path / "store"), "--data",
                         str(data_root / "beta.npz"), "-o", str(tmp_path / "beta"))
    assert code == 0, err
    assert frames(tmp_path / "beta" / "fractions.png") == 1
    assert "## alpha" not in (tmp_path / "beta" / "report.md").read_text()


@pytest.mark.slow
def test_a_growing_grid_runs_only_what_is_new(tmp_path, data_root, capsys):
    path = write(tmp_path, data_root, PROBE.replace('"linear", "knn"', '"linear"'))
    code, out, err = cli(capsys, "run", str(path), "--json", "--set", "fractions=[1.0]")
    assert code == 0, err
    code, out, err = cli(capsys, "run", str(path), "--dry-run", "--json")
    plan = {s["id"]: s for s in json.loads(out)}
    assert plan["extract alpha"]["cached"] and not plan["probe alpha resnet"]["cached"]
    assert "2 stored" in plan["probe alpha resnet"]["work"]  # of 4: fraction 1.0, 2 seeds
    code, out, err = cli(capsys, "run", str(path), "--json")
    outcomes = {o["step"]: o for o in json.loads(out)}
    assert outcomes["extract beta"]["status"] == "cached"
    assert (outcomes["probe beta resnet"]["runs"], outcomes["probe beta resnet"]["computed"]) \
        == (4, 2)


@pytest.mark.slow
def test_a_failing_step_is_named_its_dependents_skipped_and_the_rest_runs(tmp_path, data_root,
                                                                         capsys):
    path = write(tmp_path, data_root, PROBE.replace('"linear", "knn"', '"linear"'))
    text = path.read_text().replace(
        'convnext = { spec = "timm:test_convnext@random", image_size = 32 }',
        f'convnext = "timm:test_convnext@{tmp_path}/missing.pth"')
    path.write_text(text)
    code, out, err = cli(capsys, "run", str(path), "--json")
    assert code == 1
    outcomes = {o["step"]: o for o in json.loads(out)}
    assert outcomes["extract alpha"]["status"] == "done"
    assert outcomes["probe alpha resnet"]["status"] == "done"
    assert outcomes["extract alpha convnext"]["status"] == "failed"
    assert "missing.pth" in outcomes["extract alpha convnext"]["error"]
    assert outcomes["probe alpha convnext"]["status"] == "skipped"
    assert "extract alpha convnext" in outcomes["probe alpha convnext"]["error"]
    assert "missing.pth" in err


@pytest.mark.slow
def test_submitit_executor_runs_the_steps_as_jobs(tmp_path, data_root, capsys):
    pytest.importorskip("submitit")
    path = write(tmp_path, data_root, PROBE.replace('"linear", "knn"', '"linear"'))
    path.write_text(path.read_text().replace('alpha = "${root}/alpha.npz"\n', ""))
    jobs = tmp_path / "jobs"
    code, out, err = cli(capsys, "run", str(path), "--json", "--executor", "submitit-local",
                         "--jobs-dir", str(jobs))
    assert code == 0, err
    outcomes = json.loads(out)
    assert [o["status"] for o in outcomes] == ["done"] * 3
    assert outcomes[1]["runs"] == 4
    assert len(list(jobs.glob("*_result.pkl"))) == 3  # each step was a submitit job


def test_study_pipeline_plans_the_paper_grid(tmp_path, capsys):
    from tests.data.test_datasets import make_dr, make_nih, make_pcam, make_pneumonia

    root = tmp_path / "data"
    make_pcam(root / "pcam")
    make_dr(root / "eyepacs", "eyepacs")
    make_pneumonia(root / "chest_xray_release")
    (root / "chest_xray_release" / "chest_xray").rename(root / "chest_xray")
    make_nih(root / "nih")
    # (for a GPU cluster: on Slurm, where a step's device is not this machine's)
    code, out, err = cli(capsys, "run", str(REPO / "pipelines" / "study.toml"), "--set",
                         f"data_root={root}", "--store", str(tmp_path / "s"), "--dry-run",
                         "--executor", "slurm", "--json")
    assert code == 0, err
    steps = json.loads(out)
    stages = [s["stage"] for s in steps]
    # 4 datasets x 5 backbones x (extract + probe + finetune) + a fusion per dataset: no
    # weights on this machine, so each backbone's extract is a step of its own that will
    # fail alone, and the plan says which file is missing
    assert len(steps) == 64 and stages.count("probe") == 20 and stages.count("fuse") == 4
    assert stages.count("extract") == 20 and stages.count("finetune") == 20
    probe = next(s for s in steps if s["stage"] == "probe")
    assert "30 runs (linear+knn x 3 fractions x 5 seeds)" in probe["work"]
    assert all(not s["cached"] for s in steps)
    by_id = {s["id"]: s for s in steps}
    assert "resnet50-1x.pth" in by_id["extract pcam simclr"]["note"]
    assert by_id["fuse chestxray14"]["deps"] == [
        "extract chestxray14 simclr", "extract chestxray14 swav",
        "extract chestxray14 dino_rn50", "extract chestxray14 dino_vits"]
    code, out, err = cli(capsys, "run", str(REPO / "pipelines" / "study.toml"), "--dry-run")
    assert code == 1 and "does not exist" in err and "data_root" in err


@pytest.mark.slow
def test_a_killed_run_continues_where_it_stopped(tmp_path, data_root):
    import os
    import signal
    import subprocess
    import sys

    path = write(tmp_path, data_root, PROBE.replace('"linear", "knn"', '"linear"'))
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "featstore", "run", str(path)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    for line in proc.stderr:  # killed as soon as the first step has finished
        if line.startswith("done extract alpha"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    again = subprocess.run([sys.executable, "-m", "featstore", "run", str(path), "--json"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    outcomes = {o["step"]: o["status"] for o in json.loads(again.stdout)}
    assert outcomes["extract alpha"] == "cached"
    assert outcomes["probe beta convnext"] == "done"  # the last step: never reached before
    assert set(outcomes.values()) <= {"cached", "done"}


@pytest.mark.slow
def test_report_keeps_sets_of_one_backbone_apart_and_waits_for_missing_datasets(
        tmp_path, data_root, capsys):
    """One spec stored at two dtypes is two sets: two rows, two bars, never one row with
    twice the seeds; a pipeline dataset the store does not hold yet is said, not fatal."""
    path = write(tmp_path, data_root, PROBE.replace('"linear", "knn"', '"linear"'), FUSE.replace(
        '["resnet", "convnext"]', '["resnet", "resnet16"]'))
    text = path.read_text().replace('alpha = "${root}/alpha.npz"\n', "").replace(
        "[extract]", '[backbones.resnet16]\nspec = "timm:test_resnet@random"\nimage_size = 32'
        '\ndtype = "float16"\n\n[extract]')
    path.write_text(text)
    code, out, err = cli(capsys, "run", str(path), "--json")
    assert code == 0, err
    make_medmnist(data_root / "gamma.npz", seed=3)
    path.write_text(text.replace("[backbones]", 'gamma = "${root}/gamma.npz"\n\n[backbones]'))
    code, out, err = cli(capsys, "report", str(path), "-o", str(tmp_path / "r"))
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    beta = md.split("## beta")[1].split("###")[0]
    assert "| test_resnet [fp32/float32] (random) | linear | " in beta
    assert "| test_resnet [fp32/float16] (random) | linear | " in beta
    assert beta.count("(n=2)") == 3 * 2 + 2  # 3 sets x 2 fractions; dvme, concat at 1.0
    assert "## gamma" in md and "Not in the store yet" in md
    assert frames(tmp_path / "r" / "attention.png") == 2


@pytest.mark.slow
def test_an_extract_only_pipeline_embeds_every_backbone(tmp_path, data_root, capsys):
    code, out, err = cli(capsys, "run", str(write(tmp_path, data_root)), "--dry-run", "--json")
    assert code == 0, err
    steps = json.loads(out)
    assert [s["id"] for s in steps] == ["extract alpha", "extract beta"]
    assert all("x 2 of 2 backbones" in s["work"] for s in steps)


@pytest.mark.slow
def test_a_killed_run_leaves_no_step_worker_behind(tmp_path, data_root):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "long.toml"
    path.write_text(GRID.format(store=tmp_path / "store", root=data_root).replace(
        'convnext = {{ spec = "timm:test_convnext@random", image_size = 32 }}'.replace(
            "{{", "{").replace("}}", "}"), "") + FINETUNE.replace("epochs = 1", "epochs = 500"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, "-m", "featstore", "run", str(path)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(run.pid), "-f", "spawn_main"],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    deadline = time.time() + 120
    while not children() and time.time() < deadline:
        time.sleep(0.2)
    workers = children()
    assert workers, "no step worker started"
    time.sleep(2)  # the worker is inside its step now
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and
                                         "zombie" not in open(f"/proc/{p}/status").read()
                                         for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}")
             and "zombie" not in open(f"/proc/{p}/status").read()]
    for p in alive:  # do not leak it into the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert not alive, "the step worker outlived its featstore run"


@pytest.mark.slow
def test_the_report_of_a_pipeline_needs_the_store_not_the_images(tmp_path, data_root,
                                                                 capsys):
    path = write(tmp_path, data_root, PROBE)
    code, _, err = cli(capsys, "run", str(path))
    assert code == 0, err
    for f in data_root.iterdir():  # a teammate with the store but without the files
        f.rename(tmp_path / f.name)
    code, out, err = cli(capsys, "report", str(path), "-o", str(tmp_path / "r"))
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    assert "alpha" in md and "beta" in md and "Not in the store yet" not in md


@pytest.mark.slow
def test_report_names_are_literal_markdown_and_a_dataset_named_twice_is_one_section(
        tmp_path, data_root, capsys):
    from featstore.report.document import _md

    assert _md("a|b *c* <i> [x](y)") == "a\\|b \\*c\\* \\<i\\> [x\\](y)"
    assert _md("test_resnet [fp32/float32]") == "test_resnet [fp32/float32]"  # as it reads
    path = write(tmp_path, data_root, PROBE)
    text = path.read_text().replace("[backbones]",
                                    'again = "${root}/alpha.npz"\n\n[backbones]')
    path.write_text(text.replace('name = "tiny"', 'name = "tiny | *bold*"'))
    code, _, err = cli(capsys, "run", str(path))
    assert code == 0, err
    code, _, err = cli(capsys, "report", str(path), "-o", str(tmp_path / "r"))
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.count("## alpha") == 1 and md.count("## beta") == 1


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_at_once_compute_every_step_once(tmp_path, data_root, request, where):
    import os
    import subprocess
    import sys

    store = (request.getfixturevalue("s3_store") if where == "s3"
             else str(tmp_path / "store"))
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(store=store, root=data_root) + PROBE + FUSE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "featstore", "run", str(path), "--json"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    steps = [json.loads(out) for out, _ in outs]
    by_step: dict[str, list[dict]] = {}
    for run in steps:
        for s in run:
            by_step.setdefault(s["step"], []).append(s)
    for sid, both in by_step.items():
        if sid.startswith(("probe", "fuse")):
            runs = max(s.get("runs") or 0 for s in both)
            computed = sum(s.get("computed") or 0 for s in both)
            assert computed == runs, (sid, both)  # each run computed by one process only


def test_set_takes_a_variable_with_or_without_its_table(tmp_path, data_root):
    path = write(tmp_path, data_root, PROBE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for f in data_root.iterdir():
        (elsewhere / f.name).write_bytes(f.read_bytes())
    for key in ("root", "vars.root"):
        pipe = load_pipeline(path, sets={key: str(elsewhere)})
        assert all(str(d.data).startswith(str(elsewhere)) for d in pipe.datasets), key
