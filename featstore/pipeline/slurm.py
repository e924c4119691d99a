"""A plan's steps as Slurm jobs: submitted through submitit, watched by featstore.

What a job asks for comes from its step: a GPU only for a GPU step (extract, finetune) whose
device is not ``cpu``, and everything it asks for is tried with ``sbatch --test-only``
against the partition before any job is queued; a request the partition cannot meet is one
error naming the ``[slurm]`` key to change.

Jobs are watched from ``squeue`` (one call a poll for all of them, every ``poll_s``
seconds), not from ``sacct``, which small clusters often lack: a job cancelled, failed, out
of memory, timed out or on a failed node fails its step at the next poll with Slurm's state
and reason; a job PENDING for a reason that will not go away on its own (its partition
cannot run it, an invalid account) is cancelled and fails its step; a job that leaves the
queue without a result fails its step. Interrupted (Ctrl-C, SIGTERM), the run cancels
every job it queued and stops waiting at once.

Each step is resumable (the store keeps its finished shards and runs), so each job is
submitit-checkpointable: sent ``USR2`` ``signal_delay_s`` seconds before its time limit,
or preempted, it is requeued and starts again from what it stored.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import pickle_load

from featstore.errors import FeatstoreError
from featstore.pipeline.plan import Step
from featstore.pipeline.run import _last_error, run_step, torchrun_extract

POLL_S = 5.0  # seconds between two looks at the queue ([slurm] poll_s)
SIGNAL_DELAY_S = 90  # a job is told to stop this long before its time limit (submitit's)
DEFAULT_TIMEOUT_MIN = 240
MAX_DEFAULT_CPUS = 8  # cpus_per_task unless given: the partition's nodes' CPUs, up to this
# states a job does not come back from (Slurm's squeue names)
FAILED_STATES = {"BOOT_FAIL", "CANCELLED", "DEADLINE", "FAILED", "NODE_FAIL",
                 "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"}
# PENDING reasons that do not go away on their own: the job would wait forever
STUCK_REASONS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit",
                 "BadConstraints", "InvalidAccount", "InvalidQOS", "DependencyNeverSatisfied",
                 "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxMemoryPerJob",
                 "QOSMaxNodePerJobLimit", "QOSMaxWallDurationPerJobLimit",
                 "AssocMaxCpuPerJobLimit", "AssocMaxGRESPerJob", "AssocMaxMemPerJob",
                 "AssocMaxNodesPerJob", "AssocMaxWallDurationPerJobLimit"}
# which [slurm] key a refused request most likely needs changed, by what sbatch said
_KEY_OF_ERROR = (("gres", "gpus_per_node"), ("partition", "partition"),
                 ("account", "account"), ("qos", "qos"), ("time limit", "timeout_min"))


class ResumableStep(submitit.helpers.Checkpointable):
    """One step as a job that may be stopped and requeued (time limit, preemption): run
    again, it resumes from what the store holds, so the checkpoint is the step itself."""

    def __call__(self, args: dict[str, Any]) -> dict[str, Any]:
        return run_step(args)


class ResumableTorchrun(submitit.helpers.Checkpointable):
    """An extract step over ``gpus`` GPUs of one node (torchrun inside the job), requeued
    as :class:`ResumableStep` is."""

    def __call__(self, args: dict[str, Any], gpus: int) -> dict[str, Any]:
        return torchrun_extract(args, gpus)


def _call(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise FeatstoreError(f"--executor slurm: {cmd[0]} not found (is this a Slurm login "
                             "node? Slurm's client commands must be on PATH)") from None
    except subprocess.TimeoutExpired:
        raise FeatstoreError(f"--executor slurm: {' '.join(cmd[:2])} did not answer in "
                             f"{timeout:.0f} s (is slurmctld up?)") from None


@dataclass
class Partition:
    """What ``sinfo`` says a partition's nodes offer (the largest of them)."""

    name: str
    cpus: int
    memory_mb: int
    gres: str  # "(null)" without generic resources

    @classmethod
    def query(cls, name: str | None) -> Partition:
        cmd = ["sinfo", "-h", "-o", "%P|%c|%m|%G"] + (["-p", name] if name else [])
        out = _call(cmd)
        rows = [ln.split("|") for ln in out.stdout.splitlines() if ln.count("|") == 3]
        if name is None:  # the default partition: sinfo marks it with '*'
            rows = [r for r in rows if r[0].endswith("*")] or rows
        if out.returncode or not rows:
            listed = _call(["sinfo", "-h", "-o", "%P"]).stdout.split()
            what = f"partition = {name!r}: no such partition" if name else "no partition"
            raise FeatstoreError(f"[slurm] {what} (sinfo lists: "
                                 f"{', '.join(p.rstrip('*') for p in listed) or 'none'})")
        return cls(name=rows[0][0].rstrip("*"), cpus=max(_int(r[1]) for r in rows),
                   memory_mb=max(_int(r[2]) for r in rows),
                   gres=",".join(sorted({r[3] for r in rows})))


def _int(text: str) -> int:
    digits = "".join(c for c in text.rstrip("+") if c.isdigit())
    return int(digits) if digits else 0


@dataclass
class _Group:
    """The jobs of one step (one, or an extract's array tasks) and the future they settle:
    its result once every job has one; its error at the first job that fails (the others
    cancelled)."""

    step: Step
    future: cf.Future
    jobs: list[str]
    results: dict[str, dict] = field(default_factory=dict)


@dataclass
class _Watched:
    job: Any  # submitit's Job
    group: _Group
    missing: int = 0  # polls it was not in the queue without a result
    ended: int = 0  # polls it was COMPLETED or PREEMPTED without a result
    last: tuple[str, str] | None = None  # the (state, reason) last seen

    @property
    def future(self) -> cf.Future:
        return self.group.future


@dataclass
class SlurmExecutor:
    """Steps as Slurm jobs (see the module's account): ``slurm`` is the pipeline file's
    ``[slurm]`` table, ``folder`` where submitit keeps scripts, logs and results."""

    folder: str
    slurm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.slurm
        self.poll_s = float(s.get("poll_s", POLL_S))
        self.signal_delay_s = int(s.get("signal_delay_s", SIGNAL_DELAY_S))
        self.timeout_min = int(s.get("timeout_min", DEFAULT_TIMEOUT_MIN))
        if not self.poll_s > 0:
            raise FeatstoreError(f"[slurm] poll_s = {s['poll_s']!r}: expected seconds > 0")
        if self.timeout_min * 60 <= self.signal_delay_s + 30:
            raise FeatstoreError(
                f"[slurm] timeout_min = {self.timeout_min}: a job is told to stop "
                f"{self.signal_delay_s} s before its time limit (signal_delay_s) to be "
                f"requeued; ask for at least {self.signal_delay_s // 60 + 2} minutes, or a "
                "smaller signal_delay_s")
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._partition: Partition | None = None
        self._tested: set[tuple[str, ...]] = set()

    # -- what a job asks for -------------------------------------------------------------

    def gpus(self, step: Step) -> int:
        """GPUs a step's job asks for: ``gpus_per_node`` (1 unless given) for a GPU step
        whose device is not the CPU; none otherwise."""
        device = str(step.args.get("device", "auto"))
        if not step.gpu or device == "cpu" or device.startswith("mps"):
            return 0
        return int(self.slurm.get("gpus_per_node", 1))

    def tasks(self, step: Step) -> int:
        """Jobs a step runs as: an extract step as ``extract_tasks`` array tasks, which
        share its shards through the store's claims (each may be a node of its own)."""
        return int(self.slurm.get("extract_tasks", 1)) if step.stage == "extract" else 1

    def cpus(self) -> int:
        if "cpus_per_task" in self.slurm:
            return int(self.slurm["cpus_per_task"])
        return max(1, min(MAX_DEFAULT_CPUS, self.partition().cpus))

    def partition(self) -> Partition:
        if self._partition is None:
            self._partition = Partition.query(self.slurm.get("partition"))
        return self._partition

    def parameters(self, step: Step) -> dict[str, Any]:
        """submitit's parameters of a step's job."""
        s = self.slurm
        params: dict[str, Any] = {
            "timeout_min": self.timeout_min, "name": f"featstore-{step.stage}", "nodes": 1,
            "tasks_per_node": 1, "cpus_per_task": self.cpus(), "gpus_per_node": self.gpus(step),
            "slurm_signal_delay_s": self.signal_delay_s}
        if "mem_gb" in s:
            params["mem_gb"] = s["mem_gb"]
        for k in ("partition", "account", "qos"):
            if k in s:
                params[f"slurm_{k}"] = s[k]
        if s.get("additional"):
            params["slurm_additional_parameters"] = dict(s["additional"])
        return params

    def sbatch_flags(self, step: Step) -> list[str]:
        """The ``sbatch`` options of a step's job (what ``--test-only`` tries)."""
        s, gpus = self.slurm, self.gpus(step)
        flags = [f"--time={self.timeout_min}", "--nodes=1", "--ntasks-per-node=1",
                 f"--cpus-per-task={self.cpus()}"]
        flags += [f"--gpus-per-node={gpus}"] if gpus else []
        flags += [f"--mem={s['mem_gb']}G"] if "mem_gb" in s else []
        flags += [f"--{k}={s[k]}" for k in ("partition", "account", "qos") if k in s]
        flags += [f"--{k.replace('_', '-')}={v}" for k, v in (s.get("additional") or {}).items()]
        return flags

    def check(self, steps: list[Step]) -> None:
        """Every distinct request of ``steps`` tried with ``sbatch --test-only`` before
        anything is queued.

        Raises
        ------
        FeatstoreError
            Names the ``[slurm]`` key to change and what the partition offers.
        """
        for step in steps:
            flags = tuple(self.sbatch_flags(step))
            if flags in self._tested:
                continue
            res = _call(["sbatch", "--test-only", *flags, "--wrap", "true"])
            if res.returncode:
                raise FeatstoreError(self._refusal(step, res.stderr.strip() or res.stdout))
            self._tested.add(flags)

    def _refusal(self, step: Step, said: str) -> str:
        """One line: which [slurm] key to change for this refused request, and why."""
        p = self.partition()
        said = " ".join(ln.removeprefix("sbatch: error: ").strip()
                        for ln in said.splitlines() if ln.strip())
        where = f"partition {p.name}'s nodes"
        gpus = self.gpus(step)
        if gpus and "gpu" not in p.gres:
            return (f"[slurm] gpus_per_node = {gpus}: {where} have no GPUs (gres {p.gres}); "
                    f"a {step.stage} step on device {step.args.get('device', 'auto')!r} asks "
                    "for them: name a GPU partition, or set device = \"cpu\" for its stage "
                    f"(sbatch: {said})")
        if self.cpus() > p.cpus:
            return (f"[slurm] cpus_per_task = {self.cpus()}: {where} have {p.cpus} CPUs "
                    f"(sbatch: {said})")
        mem = self.slurm.get("mem_gb")
        if mem is not None and p.memory_mb and int(mem) * 1024 > p.memory_mb:
            return (f"[slurm] mem_gb = {mem}: {where} have {p.memory_mb // 1024} GB "
                    f"(sbatch: {said})")
        lowered = said.lower()
        key = next((k for text, k in _KEY_OF_ERROR if text in lowered), None)
        named = f"[slurm] {key} = {self.slurm.get(key)!r}" if key in self.slurm else "[slurm]"
        return (f"{named}: sbatch refuses the {step.stage} step's job "
                f"({' '.join(self.sbatch_flags(step))}): {said}")

    # -- queueing and watching -----------------------------------------------------------

    def submit(self, step: Step) -> cf.Future:
        self.check([step])
        ex = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        ex.update_parameters(**self.parameters(step))
        gpus, n = self.gpus(step), self.tasks(step)
        with contextlib.redirect_stdout(sys.stderr):  # stdout is featstore's own
            if step.stage == "extract" and gpus > 1:
                jobs = ex.map_array(ResumableTorchrun(), [step.args] * n, [gpus] * n)
            else:
                jobs = ex.map_array(ResumableStep(), [step.args] * n)
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()
        group = _Group(step, future, [str(j.job_id) for j in jobs])
        with self._lock:
            for job in jobs:
                self._watched[str(job.job_id)] = _Watched(job, group)
        print(f"queued {step.id}: Slurm job {', '.join(group.jobs)}", file=sys.stderr)
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="featstore-slurm",
                                            daemon=True)
            self._thread.start()
        return future

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                open_jobs = {j: w for j, w in self._watched.items() if not w.future.done()}
            if not open_jobs:
                continue
            try:
                queue = _queue(list(open_jobs))
            except FeatstoreError as e:  # squeue did not answer: try again next poll
                print(f"warning: {e}", file=sys.stderr)
                continue
            for job_id, w in open_jobs.items():
                try:
                    self._update(job_id, w, queue.get(job_id))
                except Exception as e:  # a bad result file: the step fails, the run goes on
                    if not w.future.done():
                        w.future.set_exception(RuntimeError(f"Slurm job {job_id}: {e}"))

    def _update(self, job_id: str, w: _Watched, entry: tuple[str, str] | None) -> None:
        """Settle a job's future when its state says it is over."""
        result = Path(w.job.paths.result_pickle)
        if result.exists():
            outcome, value = pickle_load(result)
            if outcome != "success":
                self._fail(w, _last_error(str(value)))
                return
            g = w.group
            g.results[job_id] = value if isinstance(value, dict) else {}
            if len(g.results) == len(g.jobs) and not g.future.done():
                first = g.results[g.jobs[0]]
                g.future.set_result({**first, "computed": max(
                    r.get("computed", 0) for r in g.results.values())})
            return
        if entry is not None and entry != w.last:  # what the queue says, as it changes
            state, reason = entry
            why = f" ({reason})" if reason not in ("None", "") else ""
            print(f"{w.group.step.id}: Slurm job {job_id} {state}{why}", file=sys.stderr)
            w.last = entry
        if entry is None:
            w.missing += 1
            if w.missing >= 2:  # gone from the queue twice running, and no result
                self._fail(w, f"Slurm job {job_id} left the queue without a result"
                              f"{self._log_tail(w)}")
            return
        w.missing = 0
        state, reason = entry
        if state in FAILED_STATES:
            why = f" ({reason})" if reason and reason != "None" else ""
            self._fail(w, f"Slurm job {job_id} {state}{why}{self._log_tail(w)}")
        elif state == "PENDING" and reason in STUCK_REASONS:
            _call(["scancel", job_id])
            self._fail(w, f"Slurm job {job_id} cannot start: PENDING ({reason}), which "
                          "does not resolve on its own; cancelled (see 'scontrol show "
                          f"partition' and the [slurm] table)")
        elif state in ("COMPLETED", "PREEMPTED"):
            # the result is written before a job ends, and a job preempted to be requeued
            # is PENDING again at once: a few polls more before either counts as the end
            w.ended += 1
            if w.ended >= 3:
                self._fail(w, f"Slurm job {job_id} {state} without a result"
                              f"{self._log_tail(w)}")
        else:
            w.ended = 0

    def _fail(self, w: _Watched, message: str) -> None:
        """Fail the job's step; its other jobs (array tasks) are cancelled."""
        if w.future.done():
            return
        w.future.set_exception(RuntimeError(message))
        rest = [j for j in w.group.jobs if j not in w.group.results and
                self._watched[j] is not w]
        if rest:
            with contextlib.suppress(FeatstoreError):
                _call(["scancel", *rest])

    @staticmethod
    def _log_tail(w: _Watched) -> str:
        """The last error line of the job's log, when it wrote one."""
        try:
            text = Path(w.job.paths.stderr).read_text(errors="replace")
        except OSError:
            return ""
        line = _last_error(text) if text.strip() else ""
        return f": {line}" if line else ""

    def shutdown(self, cancel: bool = False) -> None:
        """Stop watching; with ``cancel`` (interrupted), every job still queued or
        running is cancelled first (one ``scancel``)."""
        if cancel:
            with self._lock:
                open_jobs = [j for j, w in self._watched.items() if not w.future.done()]
            if open_jobs:
                with contextlib.suppress(FeatstoreError):
                    _call(["scancel", *open_jobs], timeout=30)
            for job_id in open_jobs:
                self._fail(self._watched[job_id], f"Slurm job {job_id} cancelled: the run "
                                                  "was interrupted")
        self._stop.set()


def _queue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(state, reason) of each job ``squeue`` still lists (recently finished ones too)."""
    res = _call(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids),
                 "-o", "%i|%T|%r"])
    if res.returncode and "Invalid job id" not in res.stderr:
        raise FeatstoreError(f"squeue failed: {res.stderr.strip()}")
    out = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out
