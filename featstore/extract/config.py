"""How an extraction runs (the data and backbones aside): each option declared once, with its
help and the values it takes (:mod:`featstore.options`). ``featstore extract``'s options, the
``[extract]`` keys of a pipeline file, the argv of a torchrun'd extract step and the checks
of :func:`featstore.extract.extract_embeddings` are read off these fields.

Torch-free and light: the command line reads it to build ``--help``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from featstore import options
from featstore.choices import (
    DECODES,
    DEFAULT_MAX_PIXELS,
    DTYPES,
    MAX_BATCH,
    MAX_SHARD_ROWS,
    MAX_WORKERS,
    ON_ERROR,
    PRECISIONS,
    RESIZES,
)
from featstore.errors import FeatstoreError
from featstore.options import option
from featstore.store.layout import DEFAULT_SHARD_ROWS


@dataclass(frozen=True)
class ExtractConfig:
    """``featstore extract``'s settings; ``extract_embeddings`` takes them as keywords."""

    batch_size: int | None = option(
        None, "Images per forward pass (default: the largest that fits the GPU with a margin, "
        "measured and recorded; 64 on CPU).", low=1, high=MAX_BATCH, optional=True)
    workers: int | None = option(None, "DataLoader workers per process (default: up to 4).",
                                 low=0, high=MAX_WORKERS, optional=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps, ...", device=True)
    precision: str = option("fp32", "Compute precision (autocast; part of the key).",
                            choices=PRECISIONS)
    dtype: str = option("float32", "Stored dtype.", choices=DTYPES)
    shard_rows: int = option(DEFAULT_SHARD_ROWS, "Rows per shard (unit of resume).", low=1,
                             high=MAX_SHARD_ROWS)
    on_error: str = option("fail", "An unreadable image: fail (stop, naming it) or skip "
                           "(store the row as missing, list it; probes leave it out).",
                           choices=ON_ERROR)
    resize: str = option("auto", "Where equal-sized uint8 arrays (.npz, HDF5) are resized: "
                         "device (batched, its own key), cpu (PIL per image) or auto (device "
                         "on CUDA).", choices=RESIZES)
    decode: str = option("cpu", "Where image files are decoded: cpu (PIL in the loader "
                         "workers) or device (JPEGs where the model runs, by TorchCodec if "
                         "installed, else torchvision: nvJPEG on CUDA; every row resized "
                         "there; its own key).",
                         choices=DECODES)
    max_pixels: int | None = option(DEFAULT_MAX_PIXELS, "An image file declaring more pixels "
                                    "is unreadable (fails, or is skipped with --on-error "
                                    "skip).", low=1, optional=True, where="cli")
    compile: bool = option(False, "torch.compile each backbone (pays off on long GPU runs).",
                           where="cli")
    claim_timeout: float | None = option(
        None, "Seconds without a heartbeat before another process takes over a shard claim "
        "(default 120, or $FEATSTORE_CLAIM_TIMEOUT; inf: never).", low=0, low_open=True,
        optional=True, finite=False, where="cli")
    verify: bool = option(False, "Check every shard of finished sets against its checksum "
                          "now and recompute those that fail (a cache hit otherwise reads "
                          "nothing; every read checks its shards).", where="cli")

    def check(self, here: bool = True) -> ExtractConfig:
        """Raise FeatstoreError naming the first bad value (its ``option`` says which);
        ``here``: the device is one of this machine's."""
        options.check(self, FeatstoreError, here)
        return self

    def kwargs(self) -> dict[str, Any]:
        """The settings as ``extract_embeddings`` keywords."""
        out = asdict(self)
        out["num_workers"] = out.pop("workers")
        return out
