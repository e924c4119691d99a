"""Preprocessing: how a backbone wants its pixels, as a hashable record and a transform.

The record is plain data (no torch or timm at import); building a transform imports timm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """Eval-time preprocessing of one backbone (part of the embedding key).

    Parameters
    ----------
    input_size : int
        Side of the square crop fed to the network, in pixels.
    crop_pct : float
        The image's shorter side is resized to ``floor(input_size / crop_pct)`` before the
        centre crop (timm convention: 0.875 -> resize 256, crop 224).
    interpolation : str
        ``bilinear`` or ``bicubic`` (or any timm name).
    mean, std : tuple of float
        Per-channel normalisation of [0, 1] pixels; (0,0,0)/(1,1,1) means none.
    crop_mode : str
        timm crop mode, ``center`` for every spec here.
    """

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_mode: str = "center"

    @classmethod
    def from_timm(cls, model_or_cfg: Any, *, input_size: int | None = None) -> Preprocessing:
        """The preprocessing of a timm model (or pretrained cfg), optionally at another size."""
        import timm.data
        import torch

        if isinstance(model_or_cfg, torch.nn.Module):
            cfg = timm.data.resolve_data_config({}, model=model_or_cfg)
        else:
            cfg = timm.data.resolve_data_config({}, pretrained_cfg=model_or_cfg)
        return cls(
            input_size=int(input_size or cfg["input_size"][-1]),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
            interpolation=str(cfg.get("interpolation", "bilinear")),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            crop_mode=str(cfg.get("crop_mode", "center")),
        )

    @property
    def resize(self) -> int:
        """Shorter side after resize, before the crop, in pixels."""
        return math.floor(self.input_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, as it enters the embedding key."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def transform(self):
        """PIL image (any mode) -> normalised float tensor (3, input_size, input_size).

        Built by timm's own eval transform factory, so a tag's numbers match timm's.
        """
        import timm.data

        tf = timm.data.create_transform(
            input_size=(3, self.input_size, self.input_size),
            is_training=False,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
        )
        return _RGBThen(tf)


class _RGBThen:
    """Grey, palette or 16-bit images become 3-channel RGB before the timm transform."""

    def __init__(self, tf) -> None:
        self.tf = tf

    def __call__(self, img: Image.Image) -> torch.Tensor:
        from featstore.data.images import to_rgb  # featstore.data needs torch: import late

        return self.tf(to_rgb(img))

    def __repr__(self) -> str:
        return f"RGB -> {self.tf!r}"
