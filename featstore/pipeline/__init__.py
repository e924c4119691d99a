"""Pipelines: a whole experiment grid from one TOML file, expanded into steps, run where
the store does not hold them yet (:mod:`featstore.pipeline.spec`, ``.plan``, ``.run``,
``.executors``, ``.slurm``)."""

from featstore.pipeline.executors import LocalExecutor, SubmititExecutor, make_executor
from featstore.pipeline.plan import Plan, Step, plan_pipeline
from featstore.pipeline.run import EXECUTORS, Outcome, run_plan, run_step
from featstore.pipeline.spec import Pipeline, PipelineError, load_pipeline, parse_sets

__all__ = [
    "EXECUTORS",
    "LocalExecutor",
    "Outcome",
    "Pipeline",
    "PipelineError",
    "Plan",
    "Step",
    "SubmititExecutor",
    "load_pipeline",
    "make_executor",
    "parse_sets",
    "plan_pipeline",
    "run_plan",
    "run_step",
]
