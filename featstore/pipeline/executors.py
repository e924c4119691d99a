"""Executors: where a plan's steps run (:func:`featstore.pipeline.run.run_plan` hands
them ready steps and waits on the futures they return).

``local``: heavy steps (extract, finetune) one at a time in a worker process, probes and
fusion beside them in a pool of ``jobs`` workers. ``submitit-local``: each step a job of
submitit's LocalExecutor on this machine. ``slurm``: each step a Slurm job
(:mod:`featstore.pipeline.slurm`).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Any

from featstore.errors import FeatstoreError
from featstore.pipeline.plan import Step
from featstore.pipeline.run import EXECUTORS, _last_error, run_step

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_init(threads: int | None) -> None:
    """In each step worker: die with the ``featstore run`` that started it (a parent killed
    by SIGKILL or SIGTERM leaves no worker behind holding claims), and take its share of the
    cores."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the line above: go now
            os._exit(1)
    if threads:
        import torch

        torch.set_num_threads(max(1, threads))


def _spawn_pool(workers: int, threads: int | None = None) -> cf.ProcessPoolExecutor:
    """Worker processes, spawned (torch's thread pools do not survive a fork) and not
    daemonic (a step's DataLoader may start its own workers)."""
    import multiprocessing

    return cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init, initargs=(threads,))


def _kill(pool: cf.ProcessPoolExecutor) -> None:
    """Stop a pool now, its running steps included (shutdown alone waits for them)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


class LocalExecutor:
    """Heavy steps (extract, finetune: they use every core or the GPU) one at a time in one
    worker process; with ``jobs`` > 1, probes and fusion beside them in a pool of ``jobs``
    processes, each with its share of the cores. Steps run in worker processes so that an
    interrupt stops them at once (a thread cannot be stopped) and a crash (out of memory)
    costs the step, not the run; a broken pool is replaced for the next step."""

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, jobs)
        self._heavy: cf.ProcessPoolExecutor | None = None
        self._pool: cf.ProcessPoolExecutor | None = None

    def submit(self, step: Step) -> cf.Future:
        from concurrent.futures.process import BrokenProcessPool

        heavy = self.jobs == 1 or step.gpu
        for _ in range(2):  # a pool broken by a crashed step is replaced once
            if heavy and self._heavy is None:
                self._heavy = _spawn_pool(1)
            if not heavy and self._pool is None:
                self._pool = _spawn_pool(self.jobs, max(1, (os.cpu_count() or 1) // self.jobs))
            try:
                return (self._heavy if heavy else self._pool).submit(run_step, step.args)
            except BrokenProcessPool:
                if heavy:
                    self._heavy = None
                else:
                    self._pool = None
        raise RuntimeError("the worker processes keep dying; see the log above")

    def shutdown(self, cancel: bool = False) -> None:
        for pool in (self._heavy, self._pool):
            if pool is not None:
                _kill(pool) if cancel else pool.shutdown(wait=True)


class SubmititExecutor:
    """Each step as a job of submitit's LocalExecutor on this machine: the seam the Slurm
    executor (:mod:`featstore.pipeline.slurm`) submits through, without Slurm."""

    def __init__(self, folder: str, timeout_min: int = 240) -> None:
        import submitit

        self.folder = folder
        self.timeout_min = timeout_min
        self._make = lambda: submitit.LocalExecutor(folder=folder)
        self._waiters = cf.ThreadPoolExecutor(max_workers=32)
        self.jobs: dict[str, Any] = {}  # step id -> submitit job

    def submit(self, step: Step) -> cf.Future:
        import submitit

        ex = self._make()
        ex.update_parameters(timeout_min=self.timeout_min)
        job = ex.submit(run_step, step.args)
        self.jobs[step.id] = job

        def wait() -> dict[str, int]:
            try:
                result = job.result()
            except submitit.core.utils.FailedJobError as e:
                raise RuntimeError(_last_error(str(e))) from None
            return result if isinstance(result, dict) else {}
        return self._waiters.submit(wait)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:  # interrupted: the jobs it started are cancelled, not left running
            for job in self.jobs.values():
                if not job.done():
                    job.cancel(check=False)
        self._waiters.shutdown(wait=not cancel, cancel_futures=cancel)


def make_executor(kind: str, *, jobs: int = 1, folder: str = "featstore-jobs",
                  slurm: dict[str, Any] | None = None):
    """The executor ``featstore run --executor KIND`` runs a plan on.

    Raises
    ------
    FeatstoreError
        submitit missing for a submitit executor, or a ``[slurm]`` table Slurm cannot
        honour (a time limit shorter than the requeue signal's margin).
    """
    if kind == "local":
        return LocalExecutor(jobs)
    if kind in ("slurm", "submitit-local"):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise FeatstoreError(f"--executor {kind} needs submitit: pip install "
                                 "'featstore[slurm]'") from None
        if kind == "slurm":
            from featstore.pipeline.slurm import SlurmExecutor

            return SlurmExecutor(folder, dict(slurm or {}))
        return SubmititExecutor(folder, int((slurm or {}).get("timeout_min", 240)))
    raise ValueError(f"unknown executor {kind!r} (expected {', '.join(EXECUTORS)})")
