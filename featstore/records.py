"""What a run reports: one metric of one run on the test split.

The probes, finetuning and DVME fusion share :class:`ScoreRecord`'s fields (the score, its
interval, the grid point, the split sizes and the run's identity); each adds what names its
own run: :class:`featstore.probe.ProbeRecord` and :class:`featstore.finetune.FinetuneRecord`
(one backbone), :class:`featstore.fusion.FuseRecord` (a method over several). A record reads
back from the run stored in the store with :meth:`ScoreRecord.from_stored`. Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(kw_only=True)
class ScoreRecord:
    """One metric of one run on test; ``config`` is the run's configuration (runs of two
    configurations are two table rows, never seeds of one)."""

    dataset: str
    task: str
    metric: str
    value: float
    primary: bool
    ci_low: float
    ci_high: float
    fraction: float
    seed: int
    n_train: int
    n_val: int
    n_test: int
    train_ids_sha256: str
    run_id: str
    hyperparameter: str = ""
    random_weights: bool = False
    n_excluded: int = 0  # rows left out: no embedding, or an image that could not be read
    cached: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_stored(cls, stored: dict[str, Any]):
        """The record a stored run holds (undefined values were stored as None; fields a
        record of this kind does not have, written by an older featstore, are left out)."""
        known = {f.name for f in fields(cls)}
        nan = float("nan")
        return cls(**{**{k: v for k, v in stored.items() if k in known}, "cached": True,
                      **{k: nan if stored[k] is None else float(stored[k])
                         for k in ("value", "ci_low", "ci_high")}})
