"""Linear probes on cached embeddings, and the study's metrics."""

from featstore.probe.linear import DEFAULT_L2_GRID, LinearProbe, SweepResult, fit_with_validation
from featstore.probe.metrics import PRIMARY_METRIC, primary_score, task_metrics
from featstore.probe.run import ProbeRecord, probe_embeddings

__all__ = [
    "DEFAULT_L2_GRID",
    "PRIMARY_METRIC",
    "LinearProbe",
    "ProbeRecord",
    "SweepResult",
    "fit_with_validation",
    "primary_score",
    "probe_embeddings",
    "task_metrics",
]
