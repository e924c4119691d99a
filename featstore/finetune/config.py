"""The finetuning recipe: its options (checked), the run id they make, the model key, and the
record a run leaves (torch-free: a plan keys runs and `results` reads them back without it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from featstore import options
from featstore._hashing import sha256_json
from featstore.choices import (
    INIT_HEADS,
    LINEAR_SOLVER,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_WORKERS,
    ON_ERROR,
    OPTIMIZERS,
    PRECISIONS,
    TASKS,
)
from featstore.errors import FeatstoreError, FinetuneError
from featstore.grid import bootstrap_option
from featstore.models.registry import BackboneSpec
from featstore.options import option
from featstore.records import ScoreRecord
from featstore.runkeys import decision_rule
from featstore.runkeys import run_id as run_key

FINETUNE = "finetune"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines a finetuning run's numbers besides the backbone and data.

    Each field is declared here once, with its help and the values it takes
    (:mod:`featstore.options`): ``featstore finetune``'s options, the ``[finetune]`` keys of
    a pipeline file and their checks are read off these fields.

    ``lr`` is the peak learning rate (after ``warmup_epochs``), for the effective batch
    ``batch_size * accum_steps``; ``layer_decay`` scales each ViT block's rate by
    ``layer_decay ** depth-from-top`` (timm); ``freeze_until`` freezes every parameter up to
    and including the named module (``layer2``, ``blocks.5``) for partial finetuning;
    ``init_head="probe"`` starts the head from the linear probe cached in the store for the
    same backbone, fraction and seed (LP-FT, Kumar et al., ICLR 2022).
    """

    task: str = option("binary", "The task (the manifest's).", choices=TASKS, where="")
    fraction: float = option(1.0, "Labelled fraction of the training rows.", low=0, high=1,
                             low_open=True, where="")
    seed: int = option(0, "Seed of the fraction's rows, the head and the batches.", low=0,
                       where="")
    epochs: int = option(10, "Epochs; the best on val is kept.", low=1, high=MAX_EPOCHS)
    batch_size: int = option(32, "Images per step.", low=1, high=MAX_BATCH)
    accum_steps: int = option(1, "Steps per optimiser update (effective batch = batch size "
                              "x this).", low=1, high=MAX_BATCH)
    lr: float = option(1e-3, "Peak learning rate (after warmup).", low=0, low_open=True)
    optimizer: str = option("adamw", "timm optimizer.", choices=OPTIMIZERS)
    weight_decay: float = option(0.05, "Not applied to norms and biases.", low=0)
    warmup_epochs: int | None = option(None, "Linear warmup, then cosine (default: 1, or 0 "
                                       "for a 1-epoch run).", low=0, optional=True)
    layer_decay: float | None = option(None, "ViT: scale each block's rate by this per "
                                       "block from the top.", low=0, high=1, low_open=True,
                                       optional=True)
    freeze_until: str | None = option(None, "Freeze the backbone up to and including this "
                                      "module (layer2, blocks.5): partial finetuning.",
                                      optional=True)
    hflip: bool = option(True, "Random horizontal flips (--no-hflip where side matters).")
    crop_scale: tuple[float, float] = option((0.08, 1.0), "Random-resized-crop scale range.",
                                             distinct=False, where="")
    init_head: str = option("fresh", "probe: start the head from the linear probe cached "
                            "for the same backbone, fraction and seed (LP-FT).",
                            choices=INIT_HEADS)
    precision: str = option("fp32", "Training precision (autocast; part of the run id).",
                            choices=PRECISIONS, where="cli")
    n_bootstrap: int = bootstrap_option()

    def __post_init__(self) -> None:
        if self.warmup_epochs is None:  # the default rule, here only
            object.__setattr__(self, "warmup_epochs", min(1, self.epochs - 1))
        for name in ("lr", "weight_decay", "layer_decay"):  # lr = 1 and 1.0: one run
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))

    def check(self) -> None:
        """Raise FinetuneError naming the first bad value (its ``option`` says which)."""
        options.check(self, FinetuneError)

    def cross_check(self, error: type[FeatstoreError]) -> None:
        """The rules between fields: warmup within the epochs, a crop range in (0, 1]."""
        if not self.warmup_epochs < self.epochs:
            raise options.invalid(error, "warmup_epochs", self.warmup_epochs,
                                  "0 to epochs - 1")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise options.invalid(error, "crop_scale", self.crop_scale, "0 < min <= max <= 1")

    def recipe(self) -> str:
        """What distinguishes this run's training from another's beside fraction and seed
        (runs of one recipe are the seeds of one table row)."""
        skip = ("fraction", "seed", "n_bootstrap")
        return sha256_json({**{k: v for k, v in asdict(self).items() if k not in skip},
                            **self._head_solver(), **decision_rule(self.task)})[:8]

    def _head_solver(self) -> dict[str, str]:
        """LP-FT starts from a linear probe: the solver that fits it is part of the run."""
        return {"solver": LINEAR_SOLVER} if self.init_head == "probe" else {}

    def run_id(self, model_key: str, val_source: str, excluded: str | None = None) -> str:
        """Content key of a run; ``excluded``: the hash of the ids of unreadable rows left
        out (runs that left none keep the ids they always had)."""
        payload = {"finetune": asdict(self), "model": model_key, "val": val_source,
                   **self._head_solver(), **decision_rule(self.task)}
        if excluded is not None:
            payload["excluded"] = excluded
        return run_key(payload)


@dataclass(frozen=True)
class FinetuneSettings:
    """How a finetuning grid loads its images, not what it computes (not in any run id);
    declared once, as :class:`FinetuneConfig` (``featstore finetune``'s options, the
    ``[finetune]`` keys). The device is the grid's (:class:`featstore.grid.GridSettings`)."""

    workers: int = option(0, "DataLoader worker processes.", low=0, high=MAX_WORKERS)
    on_error: str = option("fail", "An unreadable image (every one is decoded before epoch "
                           "1): fail (stop, naming it) or skip (leave its row out of train, "
                           "val and test).", choices=ON_ERROR)

    def check(self) -> FinetuneSettings:
        options.check(self, FinetuneError)
        return self

    def kwargs(self) -> dict[str, Any]:
        """As ``finetune_grid`` keywords."""
        return {"num_workers": self.workers, "on_error": self.on_error}


def model_key(spec: BackboneSpec, weights_sha256: str, preprocessing: dict[str, Any]) -> str:
    """What the starting network is: architecture, the weights' sha256, preprocessing."""
    return sha256_json({"architecture": spec.architecture, "weights_sha256": weights_sha256,
                        "preprocessing": preprocessing, "layer": spec.layer})


@dataclass(kw_only=True)
class FinetuneRecord(ScoreRecord):
    """One metric of one finetuning run on test (:class:`ScoreRecord`'s fields, and the
    starting model). ``probe`` is always ``"finetune"``: tables list finetuning beside the
    probes of the same backbone, as the study does."""

    backbone: str
    key: str  # the starting model's key (architecture, weights, preprocessing)
    val_source: str
    probe: str = FINETUNE
    # False: val could not choose (its metric undefined): the first epoch was kept
    chosen_on_val: bool = True
