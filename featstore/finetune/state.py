"""What makes a finetuning run resumable: the RNG states, each epoch's seed, and the
checkpoint objects in the store."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featstore.finetune.config import FinetuneConfig
from featstore.store.dataset import DatasetGroup
from featstore.store.layout import CHECKPOINTS_GROUP as CHECKPOINTS


@dataclass
class RunState:
    """What a checkpoint holds beyond the torch states."""

    epoch: int = 0  # epochs finished
    best_epoch: int = 0
    best_val: float = -np.inf
    history: list[dict[str, float]] | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The RNG states as tensors and plain values (loadable with ``weights_only=True``: a
    checkpoint read from a shared store never unpickles code)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version_, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version_, list(internal), gauss_next]}


def set_rng_states(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    kind, key, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version_, internal, gauss_next = rng["python"]
    random.setstate((version_, tuple(internal), gauss_next))


def epoch_seed(config: FinetuneConfig, epoch: int) -> int:
    return config.seed * 100_003 + epoch


def checkpoint_keys(ds: DatasetGroup, run_id: str) -> tuple[str, str]:
    base = f"{CHECKPOINTS}/{ds.name}/{run_id}"
    return f"{base}/checkpoint.pt", f"{base}/best.pt"


def save_object(objects, key: str, payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    objects.put(key, data)  # whole-object put: atomic (temp + rename, or one S3 PUT)
    return data
