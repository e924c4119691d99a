"""What an extraction reports: its progress while it works and one result per backbone
(shared by the stage, :mod:`featstore.extract.run`, and the engine)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

CPU_BATCH_SIZE = 64


class ExtractProgress(Protocol):
    """What the engine reports while it works (the CLI draws a progress bar from it)."""

    def start(self, alias: str, total_rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...

    def finish(self) -> None: ...


@dataclass
class ExtractResult:
    """Outcome of one backbone over one dataset."""

    dataset: str
    alias: str
    key: str
    dim: int
    rows: int
    status: str  # "extracted", "resumed" or "cached"
    shards_written: int  # by this process
    shards_total: int
    seconds: float
    images_per_s: float
    random_weights: bool
    shards_by_others: int = 0  # written meanwhile by other ranks or concurrent extracts
    skipped: list[str] = field(default_factory=list)  # ids stored as missing
    precision: str = "fp32"
    batch_size: int = CPU_BATCH_SIZE
    recomputed_corrupt: list[int] = field(default_factory=list)  # failed their checksum

    def to_dict(self) -> dict:
        return asdict(self)
