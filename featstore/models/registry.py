"""Backbone specs: which architecture, which weights, how to feed it, and one function to build it.

A spec is named on the command line as ``--backbone NAME[@WEIGHTS]``:

- ``timm:<model>`` is any timm architecture (``timm:resnet50``, ``timm:vit_small_patch16_224``);
- a registered name (see :func:`list_specs`) is a spec with its own weights and preprocessing;
- ``@random`` builds the architecture with seeded random weights (tests, demos; labelled
  ``random`` everywhere), ``@/path/to/checkpoint.pth`` loads a local checkpoint strictly.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch

from featstore._hashing import sha256_file
from featstore.errors import BackboneError, CheckpointError
from featstore.models.preprocessing import Preprocessing
from featstore.models.weights import resolve_weights

RANDOM = "random"
RANDOM_SEED = 0
EMBEDDING_LAYER = "pooled-prelogits"
CLS_LAST4 = "cls-last4"


@dataclass(frozen=True)
class CheckpointAdapter:
    """How a checkpoint's keys map onto the architecture's ``state_dict``.

    ``subdicts``: paths tried, in order, to find the state dict inside wrapper dicts; a path
    is dot-separated (``classy_state_dict.base_model.model.trunk``); the first that exists wins.
    ``strip_prefixes``: removed from the front of every key (each at most once, in order).
    ``drop_prefixes``: keys equal to or under these are heads we do not use. ``None`` drops
    the architecture's own classifier (timm's ``pretrained_cfg['classifier']``).
    """

    subdicts: tuple[str, ...] = ("state_dict", "model")
    strip_prefixes: tuple[str, ...] = ("module.",)
    drop_prefixes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone configuration: architecture + weights + preprocessing + embedding layer.

    Parameters
    ----------
    name : str
        How the spec is called on the command line (without the ``@weights`` part).
    architecture : str
        timm model name, optionally with a pretrained tag (``resnet50.tv_in1k``).
    weights : str, optional
        ``"random"``, a checkpoint path, or ``None``: the spec's own release file
        (``weights_file``, searched as :mod:`featstore.models.weights` says) or, for a bare
        timm name, timm's pretrained weights from the local caches.
    preprocessing : Preprocessing, optional
        ``None``: the architecture's (tag's) timm data config.
    input_size : int, optional
        Override of the crop size (small inputs for tests and demos); enters the key.
    adapter : CheckpointAdapter
        Key mapping used when loading a file.
    layer : str
        ``pooled-prelogits`` or, for ViTs, ``cls-last4`` (DINO's linear-evaluation feature:
        the normed CLS tokens of the last four blocks, concatenated).
    dim : int, optional
        Expected embedding dimension, checked after building.
    weights_file, url, source, manual_download : str
        The release file's name, where it is published, what it is, and how to get it when
        there is no URL.
    """

    name: str
    architecture: str
    weights: str | None = RANDOM
    preprocessing: Preprocessing | None = None
    input_size: int | None = None
    adapter: CheckpointAdapter = field(default_factory=CheckpointAdapter)
    layer: str = EMBEDDING_LAYER
    dim: int | None = None
    weights_file: str | None = None
    url: str | None = None
    source: str = ""
    manual_download: str = ""

    @property
    def is_random(self) -> bool:
        return self.weights == RANDOM

    @property
    def alias(self) -> str:
        """Human label: ``name@random``, ``name@<checkpoint file name>`` or ``name@pretrained``."""
        if self.weights:
            w = RANDOM if self.is_random else Path(self.weights).name
        else:
            w = self.weights_file or "pretrained"
        size = f"/{self.input_size}px" if self.input_size else ""
        return f"{self.name}{size}@{w}"


_REGISTRY: dict[str, BackboneSpec] = {}


def register_spec(spec: BackboneSpec) -> BackboneSpec:
    """Add a named spec to the registry (the backbone zoo registers the study's five)."""
    _REGISTRY[spec.name] = spec
    return spec


def list_specs() -> list[BackboneSpec]:
    """Registered specs, by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def parse_backbone(text: str, *, input_size: int | None = None) -> BackboneSpec:
    """Parse ``NAME[@WEIGHTS]`` into a spec.

    Raises
    ------
    BackboneError
        Unknown name or timm architecture, or no weights named for ``timm:<model>``.
    """
    name, _, weights = text.partition("@")
    name = name.strip()
    if name.startswith("timm:"):
        arch = name[len("timm:"):]
        if not timm.is_model(arch):
            raise BackboneError(f"backbone {text!r}: timm has no model {arch!r}")
        spec = BackboneSpec(name=name, architecture=arch, weights=weights or None,
                            source="timm pretrained (local caches)" if not weights else "")
    elif name in _REGISTRY:
        spec = _REGISTRY[name]
        if weights:
            spec = replace(spec, weights=weights)
    else:
        known = ", ".join(sorted(_REGISTRY)) or "none registered"
        raise BackboneError(
            f"unknown backbone {name!r}: use 'timm:<model>[@<weights>]' or a registered name "
            f"({known})"
        )
    if input_size:
        spec = replace(spec, input_size=int(input_size))
    return spec


@dataclass
class LoadedBackbone:
    """A built model in eval mode with what identifies its numbers."""

    spec: BackboneSpec
    model: torch.nn.Module
    preprocessing: Preprocessing
    weights_sha256: str
    dim: int

    @property
    def alias(self) -> str:
        return self.spec.alias

    def key_fields(self, dtype: str = "float32") -> dict[str, Any]:
        """Everything that changes the embedding numbers (the embedding key is its hash)."""
        return {
            "architecture": self.spec.architecture,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing.to_dict(),
            "layer": self.spec.layer,
            "dtype": dtype,
        }

    @torch.inference_mode()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits embeddings (B, dim) of a preprocessed batch."""
        return self.model(x)


def build_backbone(spec: BackboneSpec) -> LoadedBackbone:
    """Build the architecture, load its weights strictly, and return it in eval mode (CPU).

    Raises
    ------
    WeightsNotFoundError
        The checkpoint file is not there.
    CheckpointError
        The checkpoint's keys or shapes do not match the architecture exactly.
    """
    if spec.is_random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = timm.create_model(spec.architecture, pretrained=False, num_classes=0)
        weights_sha = state_dict_sha256(model.state_dict())
    else:
        path = resolve_weights(spec)
        model = timm.create_model(spec.architecture, pretrained=False, num_classes=0)
        weights_sha = sha256_file(path)
        load_checkpoint_strict(model, path, spec.adapter, label=spec.alias)
    model.eval()
    prep = spec.preprocessing or Preprocessing.from_timm(model)
    if spec.input_size:
        prep = replace(prep, input_size=spec.input_size)
    if spec.layer == CLS_LAST4:
        model = CLSLastBlocks(model, 4)
    elif spec.layer != EMBEDDING_LAYER:
        raise BackboneError(f"backbone {spec.alias}: unknown layer {spec.layer!r}")
    # timm's pre-logits width: head_hidden_size where a head adds a layer (MobileNetV3's
    # conv_head gives 1024 from 576 features), else num_features
    dim = spec.dim or int(getattr(model, "head_hidden_size", None)
                          or getattr(model, "num_features", 0))
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, prep.input_size, prep.input_size))
    except Exception as e:  # timm raises assorted errors for unsupported sizes
        raise BackboneError(
            f"backbone {spec.alias}: cannot run at input size {prep.input_size}px "
            f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if out.ndim != 2 or (dim and out.shape[1] != dim):
        raise BackboneError(
            f"backbone {spec.alias}: embedding has shape {tuple(out.shape[1:])}, expected ({dim},)"
        )
    return LoadedBackbone(spec, model, prep, weights_sha, int(out.shape[1]))


class CLSLastBlocks(torch.nn.Module):
    """A timm ViT returning the final-normed CLS tokens of its last ``n`` blocks, concatenated.

    This is DINO's linear-evaluation feature (``get_intermediate_layers`` + ``norm``): 4 x 384
    = 1536 dimensions for ViT-S/16.
    """

    def __init__(self, vit: torch.nn.Module, n: int) -> None:
        super().__init__()
        if not hasattr(vit, "blocks") or not hasattr(vit, "_pos_embed"):
            raise BackboneError(f"layer {CLS_LAST4!r} needs a timm VisionTransformer")
        self.vit, self.n = vit, n
        self.num_features = vit.num_features * n
        self.pretrained_cfg = vit.pretrained_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))
        outs = []
        for i, blk in enumerate(v.blocks):
            x = blk(x)
            if i >= len(v.blocks) - self.n:
                outs.append(v.norm(x)[:, 0])
        return torch.cat(outs, dim=-1)


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hex sha256 over a state dict's names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file's top-level dict (safetensors, or torch pickle with weights_only).

    ``argparse.Namespace`` is allowed in the pickle: DINO's full checkpoints store their
    training arguments as one. Nothing else beyond tensors and containers is unpickled.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
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


def load_checkpoint_strict(model: torch.nn.Module, path: Path, adapter: CheckpointAdapter,
                           *, label: str = "") -> None:
    """Load ``path`` into ``model`` through ``adapter``; every key must match exactly.

    Raises
    ------
    CheckpointError
        Lists the missing and unexpected keys (first ten of each) or mismatched shapes.
    """
    top = read_checkpoint(path)
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
