"""``featstore run --executor slurm`` against a real Slurm (tests/slurm_cluster.py): the
quick pipeline's results equal the local executor's run for run; what a job asks for comes
from its step and an impossible request queues nothing; a cancelled job fails its step
within a poll and a rerun resumes; Ctrl-C cancels every job and exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featstore.errors import FeatstoreError
from tests.conftest import cli
from tests.pipeline.test_pipeline import PROBE, write
from tests.slurm_cluster import PARTITION, SlurmCluster, missing

LINEAR = PROBE.replace('"linear", "knn"', '"linear"')


def write_beta(tmp_path: Path, data_root: Path, *parts: str, name: str = "grid.toml") -> Path:
    """The grid on dataset beta alone: extract beta, probe beta resnet, probe beta
    convnext."""
    path = write(tmp_path, data_root, *parts, name=name)
    path.write_text(path.read_text().replace('alpha = "${root}/alpha.npz"\n', ""))
    return path


@pytest.fixture
def slurm(monkeypatch):
    lacking = missing()
    if lacking:
        pytest.skip(f"no Slurm here ({', '.join(lacking)} missing): .ci/run installs "
                    "Debian's slurmctld, slurmd, slurm-client and munge")
    cluster = SlurmCluster().start()
    for k, v in cluster.env.items():
        monkeypatch.setenv(k, v)
    yield cluster
    cluster.stop()


def slurm_table(**keys) -> str:
    return "\n[slurm]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def results(capsys, path: Path, store: Path) -> list[tuple]:
    code, out, err = cli(capsys, "results", "--data", str(path.parent / "data" / "beta.npz"),
                         "--store", str(store), "--json")
    assert code == 0, err
    return sorted((r["run_id"], r["metric"], round(r["value"], 9)) for r in json.loads(out))


def assert_equals_a_local_run(capsys, tmp_path: Path, data_root: Path, path: Path) -> None:
    """The same grid run by the local executor into another store: every run (id, metric,
    value) equals the Slurm run's."""
    local = write_beta(tmp_path, data_root, LINEAR, name="local.toml")
    local.write_text(local.read_text().replace(str(tmp_path / "store"),
                                               str(tmp_path / "local")))
    code, _, err = cli(capsys, "run", str(local), "--json")
    assert code == 0, err
    assert results(capsys, path, tmp_path / "store") == results(capsys, path,
                                                                tmp_path / "local")


def test_the_pipeline_on_slurm_equals_the_local_run(tmp_path, data_root, capsys, slurm):
    """A [slurm] table naming only the partition, CPU steps: the jobs run, --json on
    stdout parses, and every run equals the local executor's."""
    path = write_beta(tmp_path, data_root, LINEAR, slurm_table(partition=PARTITION, poll_s=0.5))
    code, out, err = cli(capsys, "run", str(path), "--executor", "slurm", "--json",
                         "--jobs-dir", str(tmp_path / "jobs"))
    assert code == 0, err
    outcomes = json.loads(out)  # stdout holds featstore's JSON only
    assert [o["status"] for o in outcomes] == ["done"] * 3
    assert len(list((tmp_path / "jobs").glob("*_result.pkl"))) == 3  # three Slurm jobs
    slurm.wait_for(lambda jobs: len(jobs) == 3 and all(s == "COMPLETED"
                                                       for s, _ in jobs.values()))
    assert_equals_a_local_run(capsys, tmp_path, data_root, path)


def test_a_gpu_request_the_partition_cannot_meet_queues_nothing(tmp_path, data_root, capsys,
                                                                 slurm):
    """Extract on device auto asks for a GPU; the partition has none: one error naming
    the key and what to change, in seconds, and no job queued. An impossible CPU count
    the same."""
    path = write_beta(tmp_path, data_root, LINEAR, slurm_table(partition=PARTITION))
    path.write_text(path.read_text().replace('device = "cpu"', 'device = "auto"'))
    t0 = time.monotonic()
    code, _, err = cli(capsys, "run", str(path), "--executor", "slurm",
                       "--jobs-dir", str(tmp_path / "jobs"))
    assert code == 1 and time.monotonic() - t0 < 20
    assert "[slurm] gpus_per_node = 1" in err and "no GPUs" in err and 'device = "cpu"' in err
    cpus = slurm.cpus + 6
    path = write_beta(tmp_path, data_root, LINEAR, slurm_table(cpus_per_task=cpus))
    code, _, err = cli(capsys, "run", str(path), "--executor", "slurm",
                       "--jobs-dir", str(tmp_path / "jobs"))
    assert code == 1
    assert f"[slurm] cpus_per_task = {cpus}" in err and f"have {slurm.cpus} CPUs" in err
    assert slurm.jobs() == {}  # nothing was queued


def test_a_time_limit_shorter_than_the_requeue_margin_is_refused():
    pytest.importorskip("submitit")
    from featstore.pipeline import make_executor

    with pytest.raises(FeatstoreError, match=r"\[slurm\] timeout_min = 1: .*signal_delay_s"):
        make_executor("slurm", slurm={"timeout_min": 1})
    make_executor("slurm", slurm={"timeout_min": 1, "signal_delay_s": 20})


def _featstore_run(path: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "featstore", "run", str(path), "--executor", "slurm",
         "--json", "--jobs-dir", str(tmp_path / "jobs"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def _running(jobs: dict) -> list[str]:
    return [j for j, (state, _) in jobs.items() if state == "RUNNING"]


def test_a_cancelled_job_fails_its_step_within_a_poll_and_a_rerun_resumes(tmp_path, data_root,
                                                                          slurm):
    path = write_beta(tmp_path, data_root, LINEAR, slurm_table(poll_s=0.5))
    run = _featstore_run(path, tmp_path)
    [job] = slurm.wait_for(_running)
    slurm.run("scancel", job, check=True)
    t0 = time.monotonic()
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1 and time.monotonic() - t0 < 10, err
    outcomes = {o["step"]: o for o in json.loads(out)}
    assert outcomes["extract beta"]["status"] == "failed"
    assert f"Slurm job {job} CANCELLED" in outcomes["extract beta"]["error"]
    assert outcomes["probe beta resnet"]["status"] == "skipped"
    rerun = _featstore_run(path, tmp_path)
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err
    assert {o["status"] for o in json.loads(out)} == {"done"}


def test_ctrl_c_cancels_every_job_and_exits(tmp_path, data_root, slurm):
    path = write_beta(tmp_path, data_root, LINEAR, slurm_table(poll_s=0.5))
    for sig in (signal.SIGINT, signal.SIGTERM):
        run = _featstore_run(path, tmp_path)
        slurm.wait_for(lambda jobs: [j for j, (s, _) in jobs.items()
                                     if s in ("RUNNING", "PENDING")])
        run.send_signal(sig)
        t0 = time.monotonic()
        _, err = run.communicate(timeout=30)
        assert time.monotonic() - t0 < 10 and run.returncode == 130, err
        assert "interrupted" in err
        assert not slurm.jobs("pending,running"), slurm.jobs()


def test_a_requeued_job_resumes_to_the_same_results(tmp_path, data_root, capsys, slurm):
    """``scontrol requeue`` of the running extract (what preemption does): the job runs
    again, resumes from what it stored, and the run ends as an uninterrupted one."""
    path = write_beta(tmp_path, data_root, LINEAR, slurm_table(poll_s=0.5))
    run = _featstore_run(path, tmp_path)
    [job] = slurm.wait_for(_running)
    slurm.run("scontrol", "requeue", job, check=True)
    # Slurm holds a requeued batch job for 120 s (BeginTime); the test lets it go at once
    slurm.wait_for(lambda jobs: jobs[job][0] == "PENDING")
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=True)
    out, err = run.communicate(timeout=240)
    shown = slurm.run("scontrol", "show", "job", job).stdout
    logs = "\n".join(f"== {f.name}\n{f.read_text(errors='replace')[-1500:]}"
                     for f in sorted((tmp_path / "jobs").glob(f"{job}_*")))
    ctld = (slurm.folder / "log" / "slurmctld.log").read_text(errors="replace")[-3000:]
    assert run.returncode == 0, f"{err}\n{shown}\n{logs}\n{ctld}"
    assert [o["status"] for o in json.loads(out)] == ["done"] * 3
    assert "Restarts=1" in shown, shown
    assert_equals_a_local_run(capsys, tmp_path, data_root, path)


def _sets(store: Path, data: Path) -> dict[str, bytes]:
    from featstore import FeatureStore, load_dataset

    ds = FeatureStore(store).dataset(load_dataset(data))
    return {es.key: es.read().tobytes() for es in ds.embedding_sets()}


def test_an_extract_over_two_array_tasks_equals_one_process(tmp_path, data_root, capsys,
                                                             slurm):
    """``extract_tasks = 2``: the extract step is a two-task job array whose tasks share
    the sets' shards through the store's claims (one CPU each, so both run at once); the
    sets equal one local process's bit for bit."""
    path = write_beta(tmp_path, data_root, LINEAR,
                      slurm_table(extract_tasks=2, cpus_per_task=1, poll_s=0.5))
    path.write_text(path.read_text().replace("batch_size = 32", "batch_size = 8\n"
                                                                 "shard_rows = 8"))
    code, out, err = cli(capsys, "run", str(path), "--executor", "slurm", "--json",
                         "--jobs-dir", str(tmp_path / "jobs"))
    assert code == 0, err
    assert [o["status"] for o in json.loads(out)] == ["done"] * 3
    tasks = [j for j in slurm.jobs() if "_" in j]
    assert len(tasks) == 2 and {j.split("_")[1] for j in tasks} == {"0", "1"}
    local = path.with_name("local.toml")
    local.write_text(path.read_text().replace(str(tmp_path / "store"), str(tmp_path / "local")))
    code, _, err = cli(capsys, "run", str(local), "--json")
    assert code == 0, err
    beta = data_root / "beta.npz"
    made = _sets(tmp_path / "store", beta)
    assert len(made) == 2 and made == _sets(tmp_path / "local", beta)


def test_a_job_that_cannot_start_is_cancelled_and_named(tmp_path, data_root, slurm):
    """The node busy, the extract job waits (Resources: it will start); then the partition's
    time limit drops below the job's (PartitionTimeLimit: it never will): the job is
    cancelled and its step fails with the reason, the run ends."""
    slurm.run("sbatch", f"--cpus-per-task={slurm.cpus}", f"--output={slurm.folder}/busy.out",
              "--wrap", "sleep 300", check=True)
    slurm.wait_for(_running)
    path = write_beta(tmp_path, data_root, LINEAR, slurm_table(poll_s=0.5, timeout_min=30))
    run = _featstore_run(path, tmp_path)
    said = ""
    while "PENDING (Resources)" not in said:  # the wait is said on stderr as it begins
        line = run.stderr.readline()
        assert line, said
        said = line
    job = said.split("Slurm job ")[1].split()[0]
    slurm.run("scontrol", "update", "PartitionName=debug", "MaxTime=5", check=True)
    out, err = run.communicate(timeout=90)
    assert run.returncode == 1, err
    extract = next(o for o in json.loads(out) if o["step"] == "extract beta")
    assert f"Slurm job {job} cannot start: PENDING (PartitionTimeLimit)" in extract["error"]
    assert slurm.jobs()[job][0] == "CANCELLED"
