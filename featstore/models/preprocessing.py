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


    def pixel_stage(self) -> _PixelStage:
        """PIL image (any mode) -> uint8 tensor (3, input_size, input_size): timm's eval
        transform up to, not including, its to-tensor and normalisation, which
        :meth:`normalize` does on a whole batch on the device. The two stages give the bits
        of :meth:`transform` (same resize, same float ops), at a quarter of the bytes
        between loader workers and the model."""
        return pixel_stage(self.transform().tf)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) on any device -> float32, scaled to [0, 1] and
        normalised, by the float ops of torchvision's to-tensor and normalise (so the bits
        equal :meth:`transform`'s per image)."""
        import torch

        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.to(torch.float32).div_(255).sub_(mean).div_(std)

    def resize_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize of the shorter side to :attr:`resize`, as
        torchvision computes it."""
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (new_long, self.resize) if width <= height else (self.resize, new_long)

    def batched_resize_changes_bits(self, height: int, width: int) -> bool:
        """Whether :meth:`resize_batch` of (height, width) images differs from the PIL
        resize at all: not when no resize is needed (PIL then returns the image as is)."""
        return self.resize_size(height, width) != (height, width)

    def can_resize_batch(self, height: int, width: int) -> bool:
        """Whether :meth:`resize_batch` serves (height, width) images: a bilinear or
        bicubic centre crop that fits inside the resized image."""
        h, w = self.resize_size(height, width)
        return (self.interpolation in ("bilinear", "bicubic") and self.crop_mode == "center"
                and self.input_size <= min(h, w))

    def can_resize_any(self) -> bool:
        """Whether :meth:`resize_crop` serves images of any size (files of unknown sizes):
        a bilinear or bicubic centre crop no larger than the resized shorter side."""
        return (self.interpolation in ("bilinear", "bicubic") and self.crop_mode == "center"
                and self.input_size <= self.resize)

    def resize_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Equal-sized uint8 images (B, H, W) grey or (B, H, W, 3) RGB, on any device ->
        uint8 (B, 3, input_size, input_size): :meth:`resize_crop`, batched."""
        return self.resize_crop(x[:, None].expand(-1, 3, -1, -1) if x.ndim == 3
                                else x.permute(0, 3, 1, 2))

    def resize_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Equal-sized uint8 images (B, 3, H, W), on any device -> uint8 (B, 3, input_size,
        input_size): resize and centre crop, batched. PIL's resize done PIL's way: torch's
        antialiased bilinear/bicubic (PIL's kernels), the width first, then the height, each
        pass rounded half up to uint8. On real images it equals PIL's result in all but a
        few pixels in a million (off by one), so it is not bit-equal:
        :data:`BATCHED_RESIZE` enters the key of a set made this way."""
        import torch
        import torch.nn.functional as F

        h, w = self.resize_size(*x.shape[-2:])
        for size in ((x.shape[-2], w), (h, w)):  # PIL: the horizontal pass, then vertical
            if size != tuple(x.shape[-2:]):
                y = F.interpolate(x.to(torch.float32), size=size, mode=self.interpolation,
                                  align_corners=False, antialias=True)
                x = y.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
        s = self.input_size
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return x[..., top:top + s, left:left + s].contiguous()


# The batched resize on the device (torch's antialiased kernels) changes bits against PIL's
# resize; its version enters the key of every set it makes (and only where it resizes).
BATCHED_RESIZE = "torch-antialias-v1"


def pixel_stage(tf) -> _PixelStage:
    """A timm transform (eval, or training augmentation) without its final to-tensor and
    normalisation: PIL image -> uint8 tensor (3, H, W); :meth:`Preprocessing.normalize`
    finishes it on the device, batched.

    Raises
    ------
    ValueError
        The transform does not end in to-tensor and normalise (a timm change).
    """
    steps = tf.transforms
    names = [type(t).__name__ for t in steps]
    if names[-2:] not in (["MaybeToTensor", "Normalize"], ["ToTensor", "Normalize"]):
        raise ValueError(f"unexpected timm transform {names}")
    import torchvision.transforms as T

    return _PixelStage(T.Compose(steps[:-2]))


class _PixelStage:
    """PIL image -> RGB -> timm's resize and crop -> uint8 tensor (3, H, W)."""

    def __init__(self, tf) -> None:
        self.tf = tf

    def __call__(self, img: Image.Image) -> torch.Tensor:
        import numpy as np
        import torch

        from featstore.data.decode import to_rgb

        px = np.array(self.tf(to_rgb(img)), dtype=np.uint8, copy=True)
        return torch.from_numpy(px).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return f"RGB -> {self.tf!r} -> uint8"


class _RGBThen:
    """Grey, palette or 16-bit images become 3-channel RGB before the timm transform."""

    def __init__(self, tf) -> None:
        self.tf = tf

    def __call__(self, img: Image.Image) -> torch.Tensor:
        from featstore.data.decode import to_rgb

        return self.tf(to_rgb(img))

    def __repr__(self) -> str:
        return f"RGB -> {self.tf!r}"
