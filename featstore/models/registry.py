"""Backbone specs: which architecture, which weights, how to feed it, and one function to build it.

A spec is named on the command line as ``--backbone NAME[@WEIGHTS]``:

- ``timm:<model>`` is any timm architecture (``timm:resnet50``, ``timm:vit_small_patch16_224``);
- a registered name (see :func:`list_specs`) is a spec with its own weights and preprocessing;
- ``@random`` builds the architecture with seeded random weights (tests, demos; labelled
  ``random`` everywhere), ``@/path/to/checkpoint.pth`` loads a local checkpoint strictly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch

from featstore._hashing import sha256_file
from featstore.errors import BackboneError, CheckpointError, WeightsNotFoundError
from featstore.models.preprocessing import Preprocessing

RANDOM = "random"
RANDOM_SEED = 0
EMBEDDING_LAYER = "pooled-prelogits"


@dataclass(frozen=True)
class CheckpointAdapter:
    """How a checkpoint's keys map onto the architecture's ``state_dict``.

    ``subdicts``: keys tried, in order, to find the state dict inside a wrapper dict;
    ``strip_prefixes``: removed from the front of every key (repeatedly, in order);
    ``drop_prefixes``: keys starting with these are heads we do not use. ``None`` drops the
    architecture's own classifier (timm's ``pretrained_cfg['classifier']``).
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
        timm model name.
    weights : str
        ``"random"`` or a checkpoint path.
    preprocessing : Preprocessing, optional
        ``None``: the architecture's timm data config.
    input_size : int, optional
        Override of the crop size (small inputs for tests and demos); enters the key.
    adapter : CheckpointAdapter
        Key mapping used when ``weights`` is a file.
    """

    name: str
    architecture: str
    weights: str = RANDOM
    preprocessing: Preprocessing | None = None
    input_size: int | None = None
    adapter: CheckpointAdapter = field(default_factory=CheckpointAdapter)
    layer: str = EMBEDDING_LAYER

    @property
    def is_random(self) -> bool:
        return self.weights == RANDOM

    @property
    def alias(self) -> str:
        """Human label: ``name@random`` or ``name@<checkpoint file name>``."""
        w = RANDOM if self.is_random else Path(self.weights).name
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
        if not weights:
            raise BackboneError(
                f"backbone {text!r}: name the weights: '{name}@random' for seeded random "
                f"weights, or '{name}@/path/to/checkpoint.pth' for a local checkpoint"
            )
        spec = BackboneSpec(name=name, architecture=arch, weights=weights)
    elif name in _REGISTRY:
        spec = _REGISTRY[name]
        if weights:
            spec = replace(spec, weights=weights)
    else:
        known = ", ".join(sorted(_REGISTRY)) or "none registered"
        raise BackboneError(
            f"unknown backbone {name!r}: use 'timm:<model>@<weights>' or a registered name "
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
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"backbone {spec.alias}: checkpoint not found: {path} (place the file there, "
                "or give another path after '@')"
            )
        model = timm.create_model(spec.architecture, pretrained=False, num_classes=0)
        weights_sha = sha256_file(path)
        load_checkpoint_strict(model, path, spec.adapter, label=spec.alias)
    model.eval()
    prep = spec.preprocessing or Preprocessing.from_timm(model)
    if spec.input_size:
        prep = replace(prep, input_size=spec.input_size)
    dim = int(getattr(model, "num_features", 0))
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


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hex sha256 over a state dict's names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file's top-level dict (safetensors or torch pickle with weights_only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a dict")
    return obj


def load_checkpoint_strict(model: torch.nn.Module, path: Path, adapter: CheckpointAdapter,
                           *, label: str = "") -> None:
    """Load ``path`` into ``model`` through ``adapter``; every key must match exactly.

    Raises
    ------
    CheckpointError
        Lists the missing and unexpected keys (first ten of each) or mismatched shapes.
    """
    state = read_checkpoint(path)
    for key in adapter.subdicts:
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    drop = adapter.drop_prefixes
    if drop is None:
        classifier = model.pretrained_cfg.get("classifier") or ()
        drop = tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)
    cleaned: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for p in adapter.strip_prefixes:
            if k.startswith(p):
                k = k[len(p):]
        if any(k == d or k.startswith(d + ".") for d in drop if d):
            continue
        cleaned[k] = v
    expected = model.state_dict()
    missing = sorted(set(expected) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(expected))
    who = f"{label} ({path.name})" if label else str(path)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {', '.join(missing[:10])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:10])}")
        raise CheckpointError(f"checkpoint {who} does not fit {model.__class__.__name__}: "
                              + "; ".join(parts))
    bad = [f"{k} {tuple(cleaned[k].shape)} vs {tuple(expected[k].shape)}"
           for k in expected if cleaned[k].shape != expected[k].shape]
    if bad:
        raise CheckpointError(
            f"checkpoint {who}: {len(bad)} shape mismatches: {'; '.join(bad[:5])}"
        )
    model.load_state_dict(cleaned, strict=True)
