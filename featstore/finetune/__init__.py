"""Finetuning: the whole network trained on the images, by the probes' protocol.

Names load on first use (:mod:`featstore._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featstore._lazy import lazy_exports

_EXPORTS = {
    "Classifier": "featstore.finetune.model",
    "FinetuneConfig": "featstore.finetune.config",
    "FinetuneProgress": "featstore.finetune.run",
    "FinetuneRecord": "featstore.finetune.config",
    "OPTIMIZERS": "featstore.finetune.config",
    "finetune_grid": "featstore.finetune.grid",
    "finetune_run": "featstore.finetune.run",
    "finetune_run_ids": "featstore.finetune.grid",
    "stored_finetune_records": "featstore.finetune.grid",
}
__all__ = [
    "Classifier",
    "FinetuneConfig",
    "FinetuneProgress",
    "FinetuneRecord",
    "OPTIMIZERS",
    "finetune_grid",
    "finetune_run",
    "finetune_run_ids",
    "stored_finetune_records",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from featstore.finetune.config import OPTIMIZERS, FinetuneConfig, FinetuneRecord
    from featstore.finetune.grid import finetune_grid, finetune_run_ids, stored_finetune_records
    from featstore.finetune.model import Classifier
    from featstore.finetune.run import FinetuneProgress, finetune_run
