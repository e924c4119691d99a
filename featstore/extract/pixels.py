"""How pixels travel from the loader workers to a model: uint8 across the worker boundary,
the float work (normalisation, channels_last, and for fixed-size arrays the resize) batched
on the model's device.

Workers hand over uint8: a file image decoded and resized/cropped by PIL (timm's eval
transform up to its to-tensor), or, for a source of equal-sized uint8 arrays (MedMNIST's
.npz, PatchCamelyon's HDF5), the rows as the arrays hold them, read in one indexed read per
batch. On the device, :meth:`Preprocessing.normalize` repeats torchvision's float ops, so a
PIL-resized row gives the bits of the per-image transform. The batched resize
(:meth:`Preprocessing.resize_batch`) does not give PIL's bits; a set made with it carries
:data:`BATCHED_RESIZE` in its key, and only when it actually resized (arrays already at the
backbone's size go to it unresized either way, bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from featstore.choices import RESIZES
from featstore.data.arrays import uniform_array_shape
from featstore.errors import FeatstoreError
from featstore.models.preprocessing import BATCHED_RESIZE, Preprocessing

if TYPE_CHECKING:
    import torch

    from featstore.data.images import View
    from featstore.data.manifest import Manifest


def check_resize(resize: str) -> str:
    """``resize`` itself, or one error naming the valid ones."""
    if resize not in RESIZES:
        raise FeatstoreError(f"--resize {resize!r}: expected one of {', '.join(RESIZES)}")
    return resize


@dataclass(frozen=True)
class PixelPath:
    """How one preprocessing's pixels reach the model."""

    prep: Preprocessing
    raw_shape: tuple[int, ...] | None  # rows go as stored arrays of this shape (None: PIL)
    keyed: bool  # the batched resize changes bits: BATCHED_RESIZE enters the key

    @property
    def key_resize(self) -> str | None:
        """The key's ``resize`` field of sets made this way (None: PIL's bits)."""
        return BATCHED_RESIZE if self.keyed else None

    @cached_property
    def view(self) -> View:
        """What a loader worker hands over (built on first use: timm's transform factory
        is imported only when there is work)."""
        import torch

        from featstore.data.images import View

        p = self.prep
        if self.raw_shape is not None:
            return View(None, self.raw_shape, raw=True)
        return View(p.pixel_stage(), (3, p.input_size, p.input_size), p.resize, torch.uint8)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of this view's uint8 pixels (on the model's device) -> model input."""
        if self.raw_shape is not None:
            x = self.prep.resize_batch(x)
        return self.prep.normalize(x)


def batched_resize(prep: Preprocessing, array_shape: tuple[int, ...] | None, resize: str,
                   device_type: str) -> tuple[bool, bool]:
    """(whether rows go to the device as stored arrays, whether that changes bits) for
    one preprocessing over a source whose rows all have ``array_shape`` (None: files or
    mixed arrays, always the PIL path)."""
    check_resize(resize)
    if array_shape is None or not prep.can_resize_batch(*array_shape[:2]):
        return False, False
    changes = prep.batched_resize_changes_bits(*array_shape[:2])
    on_device = resize == "device" or (resize == "auto" and device_type == "cuda")
    if changes and not on_device:
        return False, False
    return True, changes


def pixel_paths(manifest: Manifest, preps: Sequence[Preprocessing], *, resize: str = "auto",
                device_type: str = "cpu") -> list[PixelPath]:
    """One :class:`PixelPath` per preprocessing, for ``manifest`` extracted on a device of
    ``device_type``. Reads array headers only."""
    shape = uniform_array_shape(manifest)
    paths = []
    for p in preps:
        raw, changes = batched_resize(p, shape, resize, device_type)
        paths.append(PixelPath(p, shape if raw else None, raw and changes))
    return paths


def key_resizes(manifest: Manifest, prep: Preprocessing, resize: str = "auto",
                device_type: str | None = None) -> list[str | None]:
    """The key ``resize`` fields a set of ``manifest`` made with ``prep`` may carry, the
    one an extract on ``device_type`` would write first. ``auto`` on an unknown device
    (None): either way, PIL's first; a finished set made either way is reused."""
    shape = uniform_array_shape(manifest)
    if device_type is not None or resize != "auto":
        raw, changes = batched_resize(prep, shape, resize, device_type or "cpu")
        return [BATCHED_RESIZE if raw and changes else None]
    out = [None]
    raw, changes = batched_resize(prep, shape, "device", "cuda")
    if raw and changes:
        out.append(BATCHED_RESIZE)
    return out
