"""The fusion grid's settings besides the sets, fractions and seeds: each declared once, with
its help and the values it takes (:mod:`featstore.options`); ``featstore fuse``'s help and
defaults and the ``[fuse]`` keys of a pipeline file are read off it. Torch-free and light."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from featstore.choices import ATTENTIONS
from featstore.options import option


@dataclass(frozen=True)
class FuseConfig:
    """``fuse_grid``'s settings (it takes them as keywords, :meth:`kwargs`)."""

    attentions: tuple[str, ...] = option(("softmax",), "DVME variants.", choices=ATTENTIONS)
    dim: int = option(256, "Common projection dimension.", low=1)
    baselines: bool = option(True, "Also report concat and each single backbone.")
    n_bootstrap: int = option(1000, "Bootstrap resamples of the test metric's CI (0: none).",
                              low=0, flag="bootstrap")

    def __post_init__(self) -> None:
        object.__setattr__(self, "attentions", tuple(self.attentions))

    def kwargs(self) -> dict[str, Any]:
        return {**asdict(self), "attentions": list(self.attentions)}
