"""The task metrics moved to :mod:`featstore.metrics` (the task layer: the losses of
:mod:`featstore.task` and the metrics that score them sit together); these names stay here
for code that imports them from their old place."""

from featstore.metrics import PRIMARY_METRIC, bootstrap_ci, primary_score, task_metrics

__all__ = ["PRIMARY_METRIC", "bootstrap_ci", "primary_score", "task_metrics"]
