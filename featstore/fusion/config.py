"""The fusion grid's settings besides the sets, fractions and seeds: each declared once, with
its help and the values it takes (:mod:`featstore.options`); ``featstore fuse``'s help and
defaults and the ``[fuse]`` keys of a pipeline file are read off it. Torch-free and light."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from featstore import options
from featstore.choices import ATTENTIONS, MAX_DIM
from featstore.errors import FusionError
from featstore.grid import bootstrap_option
from featstore.options import option


@dataclass(frozen=True)
class FuseConfig:
    """``fuse_grid``'s settings (it takes them as keywords, :meth:`kwargs`)."""

    attentions: tuple[str, ...] = option(("softmax",), "DVME variants.", choices=ATTENTIONS,
                                         cli="attention")
    dim: int = option(256, "Common projection dimension.", low=1, high=MAX_DIM)
    baselines: bool = option(True, "Also report concat and each single backbone.")
    n_bootstrap: int = bootstrap_option()

    def __post_init__(self) -> None:
        object.__setattr__(self, "attentions", tuple(self.attentions))

    def check(self) -> FuseConfig:
        """Raise FusionError naming the first bad value (its ``option`` says which)."""
        options.check(self, FusionError)
        return self

    def kwargs(self) -> dict[str, Any]:
        return {**asdict(self), "attentions": list(self.attentions)}
