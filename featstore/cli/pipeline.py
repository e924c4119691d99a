"""``featstore run`` (a pipeline file's whole grid, only what the store lacks) and
``featstore report`` (the study's tables and figures from a store's persisted runs)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from featstore.choices import MAX_JOBS
from featstore.cli._shared import (
    JsonOpt,
    ResultsStoreOpt,
    _enum,
    app,
    err,
    out,
    output_path,
    print_json,
)

Executor = _enum("Executor", ("local", "slurm", "submitit-local"))
PipelineArg = Annotated[Path, typer.Argument(
    metavar="PIPELINE", help="A pipeline file (pipelines/*.toml).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Override the file: a variable of \\[vars] "
    "(data_root=/data), a top-level key (seeds=2) or STAGE.KEY (probe.probes=[\"knn\"]); "
    "values are TOML, else strings. Repeat for several.")]
PipelineStoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="FEATSTORE_STORE",
    help="Store root (default: the file's store).")]


def _load(pipeline: Path, sets: list[str] | None, store: str | None, check_paths=True,
          check_devices=True):
    from featstore.pipeline import load_pipeline, parse_sets

    return load_pipeline(pipeline, sets=parse_sets(sets), store=store,
                         check_paths=check_paths, check_devices=check_devices)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@app.command()
def run(
    pipeline: PipelineArg,
    store: PipelineStoreOpt = None,
    sets: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (each step cached or to run, rows, work) and "
        "stop.")] = False,
    jobs: Annotated[int, typer.Option(
        help="Probe and fusion steps run side by side in this many processes (local).")] = 1,
    executor: Annotated[Executor, typer.Option(
        help="local: this machine; slurm: each step a Slurm job through submitit (GPU "
        "steps ask for [slurm] gpus_per_node; torchrun inside when > 1); submitit-local: "
        "submitit's jobs on this machine.")] = Executor.local,
    jobs_dir: Annotated[Path, typer.Option(
        help="Where submitit keeps its job scripts and logs.")] = Path("featstore-jobs"),
    results_store: ResultsStoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a pipeline file's grid: extract, probe, fuse, finetune, in dependency order,
    skipping what the store holds already (killed, it continues where it stopped).

    Exit code 1 if any step failed; the failure is named and every other step still runs.
    """
    import time

    from featstore.pipeline import make_executor, plan_pipeline, run_plan
    from featstore.report.tables import outcome_table, plan_notes, plan_table

    if not 1 <= jobs <= MAX_JOBS:
        raise typer.BadParameter(f"--jobs {jobs}: expected a value in [1, {MAX_JOBS}]")
    t0 = time.perf_counter()
    # a step's device is this machine's unless Slurm runs the steps (then: its name only)
    pipe = _load(pipeline, sets, store, check_devices=executor != Executor.slurm)
    plan = plan_pipeline(pipe, results_store=results_store)
    if dry_run:
        if as_json:
            print_json([s.to_dict() for s in plan.steps])
            return
        out.print(plan_table(plan))
        for note in plan_notes(plan):
            err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        todo = sum(not s.cached for s in plan.steps)
        err.print(f"{len(plan.steps)} steps, {todo} to run, {len(plan.steps) - todo} cached "
                  f"(store {escape(pipe.store)}; planned in {time.perf_counter() - t0:.1f} s)")
        return
    slurm = pipe.slurm | {"folder": pipe.slurm.get("folder", str(jobs_dir))}
    ex = make_executor(executor.value, jobs=jobs, folder=slurm["folder"], slurm=slurm)
    # SIGTERM (a scheduler's, kill's) stops the run as Ctrl-C does: the steps it started
    # (worker processes, Slurm jobs) are stopped, not left running
    signal.signal(signal.SIGTERM, _interrupt)

    def started(step) -> None:
        if not as_json:
            err.print(f"[dim]queued[/] {escape(step.id)}  [dim]({escape(step.work)})[/]")

    def finished(o) -> None:
        if as_json:
            return
        colour = {"failed": "red", "skipped": "yellow", "cached": "dim"}.get(o.status, "green")
        if o.status == "cached":
            return
        tail = f": {o.error}" if o.error else (f" in {o.seconds:.1f} s" if o.seconds else "")
        err.print(f"[{colour}]{o.status}[/] {escape(o.step)}{escape(tail)}")

    outcomes = run_plan(plan, ex, on_outcome=finished, on_start=started)
    failed = [o for o in outcomes if o.status in ("failed", "skipped")]
    if as_json:
        print_json([o.to_dict() for o in outcomes])
    else:
        out.print(outcome_table(outcomes))
        err.print(f"{len(outcomes)} steps: "
                  + ", ".join(f"{sum(o.status == s for o in outcomes)} {s}"
                              for s in ("done", "cached", "failed", "skipped"))
                  + f" in {time.perf_counter() - t0:.1f} s (store {escape(pipe.store)})")
    if failed:
        for o in failed:
            if o.status == "failed":
                err.print(f"[red]error:[/] {escape(o.step)}: {escape(o.error)}",
                          highlight=False)
        raise typer.Exit(1)


@app.command()
def report(
    pipeline: Annotated[Path | None, typer.Argument(
        metavar="[PIPELINE]", help="Report this pipeline file's datasets (its store, "
        "unless --store).")] = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", parser=output_path,
        help="Folder to write report.html, report.md and the PNGs to.")]
    = Path("featstore-report"),
    store: PipelineStoreOpt = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Report one dataset (any --data form, or its group name in the "
        "store).")] = None,
    sets: SetOpt = None,
    tsne_rows: Annotated[int, typer.Option(
        help="Rows sampled for each dataset's 2-D map (t-SNE).")] = 1000,
) -> None:
    """Write the study's report from a store's persisted runs: per-dataset tables
    (mean ± sd over seeds, 95% CI, best marked), label-fraction curves, DVME attention,
    a 2-D map of an embedding set, and the provenance of every set. Computes no runs."""
    from featstore.report.document import build_report
    from featstore.store import FeatureStore

    if tsne_rows < 10:
        raise typer.BadParameter(f"--tsne-rows {tsne_rows}: expected 10 or more")

    datasets = grid = None
    if pipeline is not None:
        pipe = _load(pipeline, sets, store, check_paths=False, check_devices=False)
        root = store or pipe.store
        datasets = [(d.data, d.root, d.task) for d in pipe.datasets]
        grid = pipe.stages
        title = pipe.name
    else:
        from featstore.cli._shared import DEFAULT_STORE

        root = store or DEFAULT_STORE
        title = "featstore report"
    if data is not None:
        datasets = [data]
    written = build_report(FeatureStore(root), output, datasets=datasets, grid=grid,
                           title=title,
                           tsne_rows=tsne_rows)
    for path in written:
        out.print(str(path))
