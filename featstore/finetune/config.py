"""The finetuning recipe: its options (checked), the run id they make, and the model key."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from featstore._hashing import sha256_json
from featstore.choices import PRECISIONS
from featstore.errors import FinetuneError
from featstore.models.registry import BackboneSpec
from featstore.runkeys import run_id as run_key
from featstore.store.layout import CHECKPOINTS_GROUP
from featstore.task import check_task

OPTIMIZERS = ("adamw", "sgd")
INIT_HEADS = ("fresh", "probe")
CHECKPOINTS = CHECKPOINTS_GROUP
FINETUNE = "finetune"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines a finetuning run's numbers besides the backbone and data.

    ``lr`` is the peak learning rate (after ``warmup_epochs``), for the effective batch
    ``batch_size * accum_steps``; ``layer_decay`` scales each ViT block's rate by
    ``layer_decay ** depth-from-top`` (timm); ``freeze_until`` freezes every parameter up to
    and including the named module (``layer2``, ``blocks.5``) for partial finetuning;
    ``init_head="probe"`` starts the head from the linear probe cached in the store for the
    same backbone, fraction and seed (LP-FT, Kumar et al., ICLR 2022).
    """

    task: str = "binary"
    fraction: float = 1.0
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    accum_steps: int = 1
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    layer_decay: float | None = None
    freeze_until: str | None = None
    hflip: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    init_head: str = "fresh"
    precision: str = "fp32"
    n_bootstrap: int = 1000

    def check(self) -> None:
        """Raise FinetuneError naming the first bad value."""
        check_task(self.task)
        problems = [
            (not 0 < self.fraction <= 1, f"fraction {self.fraction} is outside (0, 1]"),
            (self.epochs < 1, f"--epochs {self.epochs}: expected at least 1"),
            (self.batch_size < 1, f"--batch-size {self.batch_size}: expected at least 1"),
            (self.accum_steps < 1, f"--accum-steps {self.accum_steps}: expected at least 1"),
            (not 0 < self.lr < float("inf"), f"--lr {self.lr}: expected a positive rate"),
            (not 0 <= self.weight_decay < float("inf"),
             f"--weight-decay {self.weight_decay}: expected a finite value >= 0"),
            (not 0 <= self.warmup_epochs < self.epochs,
             f"--warmup-epochs {self.warmup_epochs}: expected 0 to epochs - 1"),
            (self.layer_decay is not None and not 0 < self.layer_decay <= 1,
             f"--layer-decay {self.layer_decay}: expected a factor in (0, 1]"),
            (self.optimizer not in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r} (expected one of {', '.join(OPTIMIZERS)})"),
            (self.precision not in PRECISIONS, f"unknown precision {self.precision!r}"),
            (self.init_head not in INIT_HEADS,
             f"--init-head {self.init_head!r}: expected one of {', '.join(INIT_HEADS)}"),
            (not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             f"crop scale {self.crop_scale}: expected 0 < min <= max <= 1"),
        ]
        for bad, message in problems:
            if bad:
                raise FinetuneError(message)

    def recipe(self) -> str:
        """What distinguishes this run's training from another's beside fraction and seed
        (runs of one recipe are the seeds of one table row)."""
        skip = ("fraction", "seed", "n_bootstrap")
        return sha256_json({k: v for k, v in asdict(self).items() if k not in skip})[:8]

    def run_id(self, model_key: str, val_source: str, excluded: str | None = None) -> str:
        """Content key of a run; ``excluded``: the hash of the ids of unreadable rows left
        out (runs that left none keep the ids they always had)."""
        payload = {"finetune": asdict(self), "model": model_key, "val": val_source}
        if excluded is not None:
            payload["excluded"] = excluded
        return run_key(payload)


def model_key(spec: BackboneSpec, weights_sha256: str, preprocessing: dict[str, Any]) -> str:
    """What the starting network is: architecture, the weights' sha256, preprocessing."""
    return sha256_json({"architecture": spec.architecture, "weights_sha256": weights_sha256,
                        "preprocessing": preprocessing, "layer": spec.layer})
