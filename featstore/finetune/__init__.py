"""Finetuning: the whole network trained on the images, by the probes' protocol."""

from featstore.finetune.run import (
    OPTIMIZERS,
    Classifier,
    FinetuneConfig,
    FinetuneProgress,
    finetune_grid,
    finetune_run,
    finetune_run_ids,
    stored_finetune_records,
)

__all__ = [
    "OPTIMIZERS",
    "Classifier",
    "FinetuneConfig",
    "FinetuneProgress",
    "finetune_grid",
    "finetune_run",
    "finetune_run_ids",
    "stored_finetune_records",
]
