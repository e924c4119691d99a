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
from typing import TYPE_CHECKING

from featstore.choices import RESIZES
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
    view: View
    batched_resize: bool  # the device resizes (the worker hands over the stored array)
    keyed: bool  # the batched resize changed bits: BATCHED_RESIZE enters the key

    @property
    def key_resize(self) -> str | None:
        """The key's ``resize`` field of sets made this way (None: PIL's bits)."""
        return BATCHED_RESIZE if self.keyed else None

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of this view's uint8 pixels (on the model's device) -> model input."""
        if self.view.raw:
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
    ``device_type``."""
    import torch

    from featstore.data.images import View, uniform_array_shape

    shape = uniform_array_shape(manifest)
    paths = []
    for p in preps:
        raw, changes = batched_resize(p, shape, resize, device_type)
        view = (View(None, shape, raw=True) if raw else
                View(p.pixel_stage(), (3, p.input_size, p.input_size), p.resize, torch.uint8))
        paths.append(PixelPath(p, view, raw, raw and changes))
    return paths


def key_resize(manifest: Manifest, prep: Preprocessing, *, resize: str = "auto",
               device_type: str = "cpu") -> str | None:
    """The key's ``resize`` field for sets of ``manifest`` made with ``prep`` (as
    :func:`pixel_paths` decides; a planner computes the keys an extract will write)."""
    from featstore.data.images import uniform_array_shape

    raw, changes = batched_resize(prep, uniform_array_shape(manifest), resize, device_type)
    return BATCHED_RESIZE if raw and changes else None
