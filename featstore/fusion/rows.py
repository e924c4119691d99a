"""The rows a DVME head trains on and scores: each backbone's rows compact (their stored
dtype), standardised only a batch or a block at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from featstore.errors import as_fusion_error
from featstore.rows import ColumnBlocks, blocks
from featstore.task import Standardiser, check_matrix

SCORE_ROWS = 2048  # rows scored at once (val each epoch, test, the evidence shares)


class Rows:
    """One backbone's rows per part, compact (their stored dtype), standardised only a
    batch or a block at a time: the same numbers as standardising them whole, without a
    float32 copy of every backbone's rows."""

    def __init__(self, parts: Sequence[torch.Tensor], means: Sequence[torch.Tensor],
                 scales: Sequence[torch.Tensor]) -> None:
        self.parts, self.means, self.scales = list(parts), list(means), list(scales)

    def __len__(self) -> int:
        return len(self.parts[0])

    def batch(self, idx: torch.Tensor | slice) -> list[torch.Tensor]:
        """Standardised float32 rows ``idx`` of every part."""
        # float16 - float32 is float32 (exact) in one allocation, divided in place
        return [torch.sub(X[idx], m).div_(s)
                for X, m, s in zip(self.parts, self.means, self.scales, strict=True)]

    def blocks(self):
        """(row slice, standardised rows of every part), a block of rows at a time."""
        for b in blocks(len(self), SCORE_ROWS):
            yield b, self.batch(b)


def compact(X: np.ndarray, device: str) -> torch.Tensor:
    """A backbone's rows as a tensor in their own dtype (float16 stays float16, float32
    shares the array's memory; anything else becomes float32), checked finite."""
    with as_fusion_error():
        X = check_matrix(X)
    keep = X.dtype in (np.float16, np.float32)
    return torch.as_tensor(X, dtype=None if keep else torch.float32, device=device)


def standardiser(X: torch.Tensor) -> Standardiser:
    """The train standardisation: :meth:`Standardiser.fit` on float32 rows (the numbers it
    always gave), accumulated block by block in float64 on compact (float16) ones."""
    if X.dtype == torch.float32:
        return Standardiser.fit(X)
    return Standardiser.fit_blocks(ColumnBlocks([X.cpu().numpy()]), str(X.device))
