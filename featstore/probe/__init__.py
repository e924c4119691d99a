"""Probes on cached embeddings (linear, kNN), the study's metrics, persisted runs.

Names load on first use (:mod:`featstore._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featstore._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_KS": "featstore.choices",
    "DEFAULT_L2_GRID": "featstore.choices",
    "KNNProbe": "featstore.probe.knn",
    "LinearProbe": "featstore.probe.linear",
    "PRIMARY_METRIC": "featstore.metrics",
    "ProbeConfig": "featstore.probe.config",
    "ProbeRecord": "featstore.probe.run",
    "SweepResult": "featstore.probe.linear",
    "bootstrap_ci": "featstore.metrics",
    "fit_with_validation": "featstore.probe.linear",
    "knn_with_validation": "featstore.probe.knn",
    "primary_score": "featstore.metrics",
    "probe_embeddings": "featstore.probe.run",
    "probe_grid": "featstore.probe.run",
    "probe_run_ids": "featstore.probe.run",
    "stored_records": "featstore.probe.run",
    "task_metrics": "featstore.metrics",
}
__all__ = [
    "DEFAULT_KS",
    "DEFAULT_L2_GRID",
    "KNNProbe",
    "LinearProbe",
    "PRIMARY_METRIC",
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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from featstore.choices import DEFAULT_KS, DEFAULT_L2_GRID
    from featstore.metrics import (
        PRIMARY_METRIC,
        bootstrap_ci,
        primary_score,
        task_metrics,
    )
    from featstore.probe.config import ProbeConfig
    from featstore.probe.knn import (
        KNNProbe,
        knn_with_validation,
    )
    from featstore.probe.linear import (
        LinearProbe,
        SweepResult,
        fit_with_validation,
    )
    from featstore.probe.run import (
        ProbeRecord,
        probe_embeddings,
        probe_grid,
        probe_run_ids,
        stored_records,
    )
