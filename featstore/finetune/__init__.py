"""Finetuning: the whole network trained on the images, by the probes' protocol.

Names load on first use (:mod:`featstore._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featstore._lazy import lazy_exports

_EXPORTS = {
    "Classifier": "featstore.finetune.run",
    "FinetuneConfig": "featstore.finetune.run",
    "FinetuneProgress": "featstore.finetune.run",
    "OPTIMIZERS": "featstore.finetune.run",
    "finetune_grid": "featstore.finetune.run",
    "finetune_run": "featstore.finetune.run",
    "finetune_run_ids": "featstore.finetune.run",
    "stored_finetune_records": "featstore.finetune.run",
}
__all__ = [
    "Classifier",
    "FinetuneConfig",
    "FinetuneProgress",
    "OPTIMIZERS",
    "finetune_grid",
    "finetune_run",
    "finetune_run_ids",
    "stored_finetune_records",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
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
