"""What a finetuning run reads: each epoch's seeded batches (split over torchrun ranks),
the loaders, the images decoded before epoch 1, and prediction over rows."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch

from featstore.data.images import RowDataset
from featstore.data.manifest import Manifest
from featstore.errors import ImageReadError
from featstore.finetune.model import embedding_width
from featstore.runtime import Distributed, autocast, distributed_from_env
from featstore.task import logits_to_proba


class SeededRows(torch.utils.data.Dataset):
    """Training rows whose augmentation is seeded by (epoch seed, row): the same crops and
    flips whatever the number of workers or ranks, and wherever a run resumed. An item is
    requested as (row, weight); weight 0 marks a padding row of a rank's share of a batch."""

    def __init__(self, base: RowDataset) -> None:
        self.base = base
        self.seed = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, float]):
        row, weight = item
        gen = torch.default_generator  # the CPU generator only (torch.manual_seed also seeds
        saved_torch, saved_py = gen.get_state(), random.getstate()  # accelerators: slow)
        s = (self.seed * 1_000_003 + row) % 2**62
        gen.manual_seed(s)
        random.seed(s)
        try:
            x, r, error = self.base[row]
        finally:
            gen.set_state(saved_torch)
            random.setstate(saved_py)
        return x, r, error, weight


def epoch_batches(rows: np.ndarray, batch_size: int, seed: int,
                   dist: Distributed) -> list[tuple[list[tuple[int, float]], int]]:
    """This rank's share of each batch of the epoch (the order drawn from ``seed``), padded
    with weight-0 rows to the same size on every rank, and the batch's real row count."""
    order = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
                 .numpy()]
    out = []
    for b in range(0, len(order), batch_size):
        batch = order[b:b + batch_size].tolist()
        k = -(-len(batch) // dist.world)
        mine = [(r, 1.0) for r in batch[dist.rank * k:(dist.rank + 1) * k]]
        mine += [(batch[0], 0.0)] * (k - len(mine))
        out.append((mine, len(batch)))
    return out


_CHECKED: dict[tuple[str, int | None], dict[int, str]] = {}


def unreadable_images(manifest: Manifest, draft: int | None, workers: int) -> dict[int, str]:
    """{row: error} of the images that cannot be read, decoded as training reads them;
    once per dataset in a process (a grid's runs share the check)."""
    key = (manifest.identity, draft)
    if key not in _CHECKED:
        from featstore.data.images import unreadable_rows

        _CHECKED[key] = unreadable_rows(manifest, workers, draft=draft)
    return _CHECKED[key]


def make_loader(manifest: Manifest, rows: np.ndarray, transform, size: int, batch_size: int, *,
            num_workers: int, pin: bool):
    """Evaluation rows in order, each once, as uint8 (normalised on the device)."""
    dataset = RowDataset(manifest, transform, (3, size, size), dtype=torch.uint8)
    if num_workers:
        dataset.share_arrays(rows)
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, rows.tolist()), batch_size=batch_size,
        num_workers=num_workers, pin_memory=pin)


def check_errors(errors: Sequence[str]) -> None:
    bad = [e for e in errors if e]
    if bad:
        raise ImageReadError(bad[0] + (f" (and {len(bad) - 1} more in this batch)"
                                       if len(bad) > 1 else ""))


def predict(model: torch.nn.Module, manifest: Manifest, rows: np.ndarray, transform,
            size: int, batch_size: int, *, device: torch.device, precision: str, task: str,
            normalize: Callable[[torch.Tensor], torch.Tensor], num_workers: int = 0,
            dist: Distributed | None = None) -> np.ndarray:
    """Probabilities of ``rows``, in order, each row evaluated exactly once: under torchrun
    each rank takes a contiguous part (no padding) and the parts are gathered. ``transform``
    gives uint8 pixels; ``normalize`` finishes them on the device."""
    dist = dist or distributed_from_env(str(device))
    k = -(-len(rows) // dist.world)
    mine = rows[dist.rank * k:(dist.rank + 1) * k]
    model.eval()
    out = []
    loader = make_loader(manifest, mine, transform, size, batch_size, num_workers=num_workers,
                     pin=device.type == "cuda")
    with torch.inference_mode(), autocast(device, precision):
        for x, _, errors in loader:
            check_errors(errors)
            out.append(model(normalize(x.to(device, non_blocking=True))).float())
    width = embedding_width(model)
    z = torch.cat(out) if out else torch.zeros(0, width, device=device)
    return dist.gather(logits_to_proba(task, z))
