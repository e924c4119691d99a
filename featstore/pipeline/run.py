"""Running a plan: each step by the same public call its verb makes, on an executor.

:func:`run_step` runs one step from plain data (so a process pool or a Slurm job can run it);
:func:`run_plan` hands ready steps to an executor as their dependencies finish, and records
each step's outcome. A failed step is named; the steps that need it are skipped; every other
step still runs. Killing a run and starting it again continues where it stopped: the plan
marks what the store holds, and the stages resume their own half-done work (an extract from
its finished shards, a finetuning run from its last epoch).

The executors, where steps run, are :mod:`featstore.pipeline.executors` (this machine) and
:mod:`featstore.pipeline.slurm` (a Slurm cluster).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from featstore import options
from featstore.errors import FeatstoreError, NotExtractedError
from featstore.pipeline.plan import Plan, Step

EXECUTORS = ("local", "slurm", "submitit-local")


@dataclass
class Outcome:
    """What became of one step."""

    step: str
    stage: str
    dataset: str
    status: str  # cached (nothing to do), done, failed, skipped (a step it needs failed)
    seconds: float = 0.0
    runs: int = 0  # sets extracted, or runs persisted (computed + read back)
    computed: int = 0  # of which computed now
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _manifest(args: dict[str, Any]):
    from featstore.data import load_dataset

    return load_dataset(args["data"], root=args.get("root"), task=args.get("task"))


def _store(args: dict[str, Any]):
    """The step's store; runs it refuses (read-only) go to the results store, the one
    ``featstore run --results-store`` named, else ``$FEATSTORE_RESULTS_STORE`` or the
    user's default, as for ``featstore probe``."""
    from featstore.store import FeatureStore
    from featstore.store.backend import default_results_store

    return FeatureStore(args["store"],
                        results_store=args.get("results_store") or default_results_store())


def _embedding_set(fs, manifest, b: dict[str, Any], pixels: dict[str, str] | None = None):
    """The set a probe or fusion step reads: of the ways the pipeline's ``[extract]``
    options (``pixels``) accept, the first the store holds (as its plan and its extract
    step find it), else what ``--backbone SPEC`` names."""
    from featstore.extract import embedding_key, resolve_embedding_set, resolve_key
    from featstore.extract.pixels import device_type, key_pixels
    from featstore.models.registry import backbone_spec

    ds = fs.dataset(manifest)
    if pixels:
        try:
            loaded, _ = resolve_key(backbone_spec(fs, b["spec"], input_size=b["image_size"]),
                                    b["dtype"], b["precision"])
        except FeatstoreError:
            loaded = None  # resolve_embedding_set below names the reason
        for fields in (key_pixels(manifest, loaded.preprocessing, pixels["resize"],
                                  device_type(pixels["device"]), pixels["decode"])
                       if loaded is not None else ()):
            try:
                es = ds.embedding_set(embedding_key(loaded, b["dtype"], b["precision"],
                                                    *fields).digest)
            except NotExtractedError:
                continue
            if es.complete:  # an unfinished one is not what the extract step took as done
                return es
    return resolve_embedding_set(ds, b["spec"], image_size=b["image_size"],
                                 dtype=b["dtype"], precision=b["precision"])


def run_step(args: dict[str, Any]) -> dict[str, Any]:
    """Run one step of a plan (``Step.args``) by its stage's public call; returns
    ``{"runs": n, "computed": m, "seconds": s}``. Raises what the stage raises.

    A probe or fusion step is claimed in the store first (as extract claims shards): a
    second ``featstore run`` of the same grid waits for it and then reads its runs back,
    so two runs at once compute each probe and fusion run once."""
    t0 = time.perf_counter()
    with _step_claim(args):
        counts = _run_step(args)
    return {**counts, "seconds": time.perf_counter() - t0}


@contextlib.contextmanager
def _step_claim(args: dict[str, Any]):
    """Hold the store's claim on a probe or fusion step while it runs (none for extract,
    whose shards are claimed, nor finetune, whose checkpoints resume; none on a store that
    cannot be written: a reader's runs go to its own results store)."""
    if args["stage"] not in ("probe", "fuse"):
        yield
        return
    from featstore._hashing import sha256_json
    from featstore.extract.claims import ClaimBoard
    from featstore.store import FeatureStore

    what = {k: v for k, v in args.items() if k not in ("results_store", "device")}
    if "pixels" in what:  # the same sets are read whichever device extracted them
        what["pixels"] = {k: v for k, v in what["pixels"].items() if k != "device"}
    path = ClaimBoard.path("_steps", sha256_json(what)[:24], "lock")
    board = ClaimBoard(FeatureStore(args["store"]))
    try:
        try:
            board.claim_wait(path)
        except OSError:  # read-only (PermissionError, EROFS): nobody to race with here
            yield
            return
        yield
    finally:
        board.close()  # releases the claim


def _run_step(args: dict[str, Any]) -> dict[str, int]:
    from featstore.models.registry import backbone_spec

    stage = args["stage"]
    manifest = _manifest(args)
    fs = _store(args)
    if stage == "extract":
        from featstore.extract import extract_embeddings

        specs = [backbone_spec(fs, b["spec"], input_size=b["image_size"])
                 for b in args["backbones"]]
        results = extract_embeddings(manifest, specs, fs, **_extract_config(args).kwargs())
        return {"runs": len(results),
                "computed": sum(r.status != "cached" for r in results)}
    if stage == "probe":
        from featstore.pipeline.plan import _probe_config
        from featstore.probe import probe_grid

        es = _embedding_set(fs, manifest, args["backbone"], args.get("pixels"))
        records = probe_grid([es], _probe_config(args, manifest.task), probes=args["probes"],
                             fractions=args["fractions"], seeds=args["seeds"],
                             device=args.get("device", "cpu"))
        return _counted(records)
    if stage == "fuse":
        from featstore.fusion import fuse_grid

        sets = [_embedding_set(fs, manifest, b, args.get("pixels")) for b in args["backbones"]]
        records = fuse_grid(sets, task=manifest.task, fractions=args["fractions"],
                            seeds=args["seeds"], attentions=args["attentions"],
                            dim=args["dim"], n_bootstrap=args["n_bootstrap"],
                            baselines=args["baselines"], device=args.get("device", "cpu"))
        return _counted(records)
    if stage == "finetune":
        from featstore.finetune import finetune_grid
        from featstore.finetune.config import FinetuneSettings
        from featstore.pipeline.spec import finetune_config

        b = args["backbone"]
        spec = backbone_spec(fs, b["spec"], input_size=b["image_size"])
        config = finetune_config(args["config"], manifest.task, b["precision"])
        records = finetune_grid(manifest, [spec], config, store=fs,
                                fractions=args["fractions"], seeds=args["seeds"],
                                device=args.get("device", "cpu"),
                                **options.from_settings(FinetuneSettings, args).kwargs())
        return _counted(records)
    raise ValueError(f"unknown stage {stage!r}")


def _counted(records) -> dict[str, int]:
    runs = {r.run_id: r.cached for r in records}
    return {"runs": len(runs), "computed": sum(not c for c in runs.values())}


def _extract_config(args: dict[str, Any]):
    """The :class:`ExtractConfig` of an extract step's settings (the file's ``[extract]``
    keys, the backbones' precision and dtype)."""
    from featstore.extract.config import ExtractConfig

    return options.from_settings(ExtractConfig, args)


def extract_argv(args: dict[str, Any]) -> list[str]:
    """``featstore extract`` arguments of an extract step (what torchrun runs on a
    multi-GPU Slurm job): the same settings the step has in process."""
    argv = ["extract", "--data", args["data"], "--store", args["store"]]
    for b in args["backbones"]:
        argv += ["--backbone", b["spec"]]
    sizes = {b["image_size"] for b in args["backbones"]}
    if len(sizes) > 1:
        raise ValueError(f"one extract command takes one --image-size, not {sorted(sizes)}")
    if None not in sizes:
        argv += ["--image-size", str(sizes.pop())]
    for opt, key in (("--root", "root"), ("--task", "task")):
        if args.get(key) is not None:
            argv += [opt, str(args[key])]
    return argv + options.argv(_extract_config(args), where=("both",))


def torchrun_extract(args: dict[str, Any], gpus: int) -> dict[str, Any]:
    """An extract step as ``torchrun --nproc-per-node=GPUS -m featstore extract ...``, once
    per image size among its backbones (``--image-size`` applies to all of a command's)."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    sizes: dict[Any, list[dict[str, Any]]] = {}
    for b in args["backbones"]:
        sizes.setdefault(b["image_size"], []).append(b)
    for members in sizes.values():
        subprocess.run([sys.executable, "-m", "torch.distributed.run",
                        f"--nproc-per-node={gpus}", "-m", "featstore",
                        *extract_argv({**args, "backbones": members})], check=True)
    return {"runs": len(args["backbones"]), "computed": len(args["backbones"]),
            "seconds": time.perf_counter() - t0}


def _last_error(text: str) -> str:
    """The exception line of a job's traceback (what the step itself raised)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("featstore.", "RuntimeError", "ValueError")) or "Error:" in ln:
            return ln
    return lines[-1] if lines else text


def _message(e: BaseException) -> str:
    from featstore.errors import FeatstoreError

    if isinstance(e, FeatstoreError | RuntimeError):
        return str(e)
    return f"{e.__class__.__name__}: {e}"


def run_plan(plan: Plan, executor, *, on_outcome: Callable[[Outcome], None] | None = None,
             on_start: Callable[[Step], None] | None = None) -> list[Outcome]:
    """Run every step not cached, each once its dependencies are done, on ``executor``.

    A step whose dependency failed is skipped (named); all other steps still run. Returns
    the outcomes in plan order.
    """
    pending = {s.id: s for s in plan.steps}
    outcomes: dict[str, Outcome] = {}
    running: dict[cf.Future, Step] = {}

    def record(o: Outcome) -> None:
        outcomes[o.step] = o
        if on_outcome is not None:
            on_outcome(o)

    try:
        check = getattr(executor, "check", None)
        if check is not None:  # what every job will ask for, before any is queued
            check([s for s in plan.steps if not s.cached])
        while pending or running:
            progressed = False
            for s in list(pending.values()):
                deps = [outcomes.get(d) for d in s.deps]
                bad = [d for d, o in zip(s.deps, deps, strict=True)
                       if o is not None and o.status in ("failed", "skipped")]
                if bad:
                    progressed = True
                    del pending[s.id]
                    record(Outcome(s.id, s.stage, s.dataset, "skipped",
                                   error=f"needs {bad[0]}, which did not finish"))
                elif all(o is not None for o in deps):
                    progressed = True
                    del pending[s.id]
                    if s.cached:
                        record(Outcome(s.id, s.stage, s.dataset, "cached"))
                        continue
                    if on_start is not None:
                        on_start(s)
                    try:
                        running[executor.submit(s)] = s
                    except Exception as e:  # the executor refused it (sbatch, dead pool)
                        record(Outcome(s.id, s.stage, s.dataset, "failed",
                                       error=f"could not be started: {_message(e)}"))
            if not running:
                if pending and not progressed:  # a dependency that is not a step of the plan
                    raise RuntimeError(f"steps wait on unknown steps: {sorted(pending)}")
                continue
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for f in done:
                s = running.pop(f)
                try:
                    counts = f.result()
                except Exception as e:  # named; the others go on
                    if os.environ.get("FEATSTORE_DEBUG") == "1":
                        traceback.print_exc()
                    record(Outcome(s.id, s.stage, s.dataset, "failed", error=_message(e)))
                    continue
                record(Outcome(s.id, s.stage, s.dataset, "done", **counts))
    except BaseException:
        executor.shutdown(cancel=True)
        raise
    executor.shutdown()
    return [outcomes[s.id] for s in plan.steps]
