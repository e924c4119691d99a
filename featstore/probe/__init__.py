"""Probes on cached embeddings (linear, kNN), the study's metrics, persisted runs."""

from featstore.probe.knn import DEFAULT_KS, KNNProbe, knn_with_validation
from featstore.probe.linear import DEFAULT_L2_GRID, LinearProbe, SweepResult, fit_with_validation
from featstore.probe.metrics import PRIMARY_METRIC, bootstrap_ci, primary_score, task_metrics
from featstore.probe.run import (
    ProbeConfig,
    ProbeRecord,
    probe_embeddings,
    probe_grid,
    probe_run_ids,
    stored_records,
)

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_L2_GRID",
    "PRIMARY_METRIC",
    "KNNProbe",
    "LinearProbe",
    "ProbeConfig",
    "ProbeRecord",
    "SweepResult",
    "bootstrap_ci",
    "fit_with_validation",
    "knn_with_validation",
    "primary_score",
    "probe_embeddings",
    "probe_grid",
    "probe_run_ids",
    "stored_records",
    "task_metrics",
]
