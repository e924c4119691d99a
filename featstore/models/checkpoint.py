"""Checkpoint files: reading them safely, and loading them strictly through a spec's adapter.

A checkpoint is read with ``weights_only=True`` (or as safetensors), so nothing but tensors,
containers and the few allow-listed types below is ever unpickled. Loading then maps its keys
through a :class:`~featstore.models.registry.CheckpointAdapter` and refuses any file whose keys
or shapes do not match the architecture exactly.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from featstore.errors import CheckpointError

if TYPE_CHECKING:
    from featstore.models.registry import CheckpointAdapter

# Types beyond tensors and containers that weights_only unpickling may build. DINO's full
# checkpoints store their training arguments as an argparse.Namespace.
_WEIGHTS_ONLY_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


def read_checkpoint(path: Path, data: bytes | None = None) -> dict[str, Any]:
    """A checkpoint file's top-level dict (safetensors, or torch pickle with weights_only).

    ``data``: the file's bytes, already read (the ones whose sha256 keys the embeddings), so
    what is loaded is what was hashed; ``path`` then only names the file and its format.
    Only tensors, containers and ``_WEIGHTS_ONLY_GLOBALS`` (``argparse.Namespace``) are
    unpickled.

    Raises
    ------
    CheckpointError
        The file cannot be read, or does not hold a dict.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load, load_file

            return load(data) if data is not None else load_file(str(path))
        with torch.serialization.safe_globals(list(_WEIGHTS_ONLY_GLOBALS)):
            obj = torch.load(io.BytesIO(data) if data is not None else path,
                             map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: "
                              f"{first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a dict")
    return obj


def _select_subdict(state: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """The first wrapper path that exists in ``state``, else ``state`` itself."""
    for dotted in paths:
        node: Any = state
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return node
    return state


def _resample_pos_embed(model: torch.nn.Module, state: dict[str, torch.Tensor],
                        expected: dict[str, torch.Tensor]) -> None:
    """A ViT built for another input size than its checkpoint: resample the checkpoint's
    absolute position embeddings to the model's patch grid (timm's bicubic resampling)."""
    pos = state.get("pos_embed")
    want = expected.get("pos_embed")
    if pos is None or want is None or pos.shape == want.shape or pos.ndim != 3:
        return
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else int(
        getattr(model, "num_prefix_tokens", 1))
    state["pos_embed"] = resample_abs_pos_embed(
        pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix)


def load_checkpoint_strict(model: torch.nn.Module, path: Path, adapter: CheckpointAdapter,
                           *, label: str = "", data: bytes | None = None) -> None:
    """Load ``path`` (or its bytes ``data``, already read) into ``model`` through
    ``adapter``; every key must match exactly.

    Raises
    ------
    CheckpointError
        Lists the missing and unexpected keys (first ten of each) or mismatched shapes.
    """
    top = read_checkpoint(path, data)
    state = _select_subdict(top, adapter.subdicts)
    drop = adapter.drop_prefixes
    if drop is None:
        classifier = model.pretrained_cfg.get("classifier") or ()
        drop = tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)
    cleaned: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for p in adapter.strip_prefixes:
            k = k.removeprefix(p)
        if any(k == d or k.startswith(d + ".") for d in drop if d):
            continue
        cleaned[k] = v
    expected = model.state_dict()
    _resample_pos_embed(model, cleaned, expected)
    # BatchNorm fills a missing num_batches_tracked itself (2017-era files, e.g. torchvision's
    # resnet50-0676ba61.pth, predate it); it is a counter, not a weight
    missing = sorted(k for k in set(expected) - set(cleaned)
                     if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(cleaned) - set(expected))
    who = f"{label} ({path.name})" if label else str(path)
    if missing or unexpected:
        parts = []
        wrappers = [k for k, v in top.items() if isinstance(v, dict)]
        if wrappers and state is top:
            parts.append(f"top-level dicts {', '.join(wrappers[:5])} were not unwrapped")
        if missing:
            parts.append(f"{len(missing)} missing keys: {', '.join(missing[:10])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:10])}")
        raise CheckpointError(f"checkpoint {who} does not fit {model.__class__.__name__}: "
                              + "; ".join(parts))
    bad = [f"{k} {tuple(cleaned[k].shape)} vs {tuple(expected[k].shape)}"
           for k in expected if k in cleaned and cleaned[k].shape != expected[k].shape]
    if bad:
        raise CheckpointError(
            f"checkpoint {who}: {len(bad)} shape mismatches: {'; '.join(bad[:5])}"
        )
    fill = {k: v for k, v in expected.items() if k not in cleaned}  # num_batches_tracked only
    model.load_state_dict({**fill, **cleaned}, strict=True)
