"""Backbone specs: which architecture, which weights, how to feed it; the registry of names.

A spec is named on the command line as ``--backbone NAME[@WEIGHTS]``:

- ``timm:<model>`` is any timm architecture (``timm:resnet50``, ``timm:vit_small_patch16_224``);
- a registered name (see :func:`list_specs`) is a spec with its own weights and preprocessing;
- ``@random`` builds the architecture with seeded random weights (tests, demos; labelled
  ``random`` everywhere), ``@/path/to/checkpoint.pth`` loads a local checkpoint strictly.

Specs are plain data: this module imports neither torch nor timm. :func:`build_backbone`
(:mod:`featstore.models.build`) turns a spec into a :class:`LoadedBackbone`, loading files
through :mod:`featstore.models.checkpoint`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.choices import MAX_IMAGE_SIZE
from featstore.errors import BackboneError
from featstore.models.preprocessing import Preprocessing
from featstore.options import invalid

if TYPE_CHECKING:
    import torch

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


# Schemes whose specs live in a store, not in this registry (``finetuned:<run id>``: a
# finetuning run's weights): each resolves (store, text) to a spec. As fsspec's
# ``known_implementations``, a known scheme names the module that registers it, imported on
# first use, so models never imports the stage that defines the scheme.
SPEC_SCHEMES: dict[str, Callable[[Any, str], BackboneSpec]] = {}
KNOWN_SCHEMES = {"finetuned:": "featstore.finetune.backbone"}


def register_scheme(prefix: str, resolve: Callable[[Any, str], BackboneSpec]) -> None:
    """Resolve ``--backbone`` values starting with ``prefix`` by ``resolve(store, text)``."""
    SPEC_SCHEMES[prefix] = resolve


def backbone_spec(store: Any, text: str, *, input_size: int | None = None) -> BackboneSpec:
    """``--backbone`` as a spec: a scheme's (``finetuned:<run id>``, from ``store``), else
    :func:`parse_backbone`'s."""
    for prefix, module in KNOWN_SCHEMES.items():
        if text.startswith(prefix) and prefix not in SPEC_SCHEMES:
            importlib.import_module(module)
    for prefix, resolve in SPEC_SCHEMES.items():
        if text.startswith(prefix):
            return resolve(store, text)
    return parse_backbone(text, input_size=input_size)


def parse_backbone(text: str, *, input_size: int | None = None) -> BackboneSpec:
    """Parse ``NAME[@WEIGHTS]`` into a spec.

    Raises
    ------
    BackboneError
        Unknown name or timm architecture, no weights named for ``timm:<model>``, or an
        ``input_size`` outside [1, ``MAX_IMAGE_SIZE``].
    """
    name, at, weights = text.partition("@")
    name = name.strip()
    if at and not weights.strip():  # `-b timm:x@$CKPT` with CKPT unset: never "pretrained"
        raise BackboneError(f"backbone {text!r}: nothing after '@' (a weights file, or "
                            "'random'; leave '@' out for timm's pretrained weights)")
    if not name:
        raise BackboneError(f"backbone {text!r}: expected a spec (timm:<model>[@<weights>] "
                            "or a registered name)")
    if name.startswith("timm:"):
        arch = name[len("timm:"):]
        spec = BackboneSpec(name=name, architecture=arch, weights=weights or None,
                            source="timm pretrained (local caches)" if not weights else "")
        if not _built_before(spec, input_size):
            import timm  # only here: a name built before (or registered) parses without it

            if not timm.is_model(arch):
                raise BackboneError(f"backbone {text!r}: timm has no model {arch!r}")
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
    if input_size is not None:
        if not 1 <= int(input_size) <= MAX_IMAGE_SIZE:
            raise invalid(BackboneError, "image_size", input_size,
                          f"a size in pixels in [1, {MAX_IMAGE_SIZE}]")
        spec = replace(spec, input_size=int(input_size))
    return spec


def _built_before(spec: BackboneSpec, input_size: int | None) -> bool:
    """Whether this spec (at ``input_size``) was built on this machine before, its
    architecture then known to timm (:mod:`featstore.models.identity`)."""
    from featstore.models.identity import remembered

    if input_size is not None:
        try:
            spec = replace(spec, input_size=int(input_size))
        except (TypeError, ValueError):
            return False
    return remembered(spec) is not None


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

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits embeddings (B, dim) of a preprocessed batch."""
        import torch

        with torch.inference_mode():
            return self.model(x)


# Building and checkpoint loading need torch and timm, so they live in their own modules; these
# names stay importable from here (featstore.extract, benchmarks) and load on first use.
_LAZY = {
    "build_backbone": "featstore.models.build",
    "load_checkpoint_strict": "featstore.models.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spec_rows() -> list[dict[str, Any]]:
    """The registered specs (``featstore models``), each with whether its weights are here.

    One dict per spec, by name: name, architecture, dim, layer, source, weights_file,
    ``present`` (the local file, or None), ``where`` (:func:`where_to_put`) and url.
    """
    from featstore.models.weights import find_weights, where_to_put

    rows = []
    for spec in list_specs():
        found = find_weights(spec)
        rows.append({"name": spec.name, "architecture": spec.architecture, "dim": spec.dim,
                     "layer": spec.layer, "source": spec.source,
                     "weights_file": spec.weights_file,
                     "present": str(found) if found else None,
                     "where": where_to_put(spec), "url": spec.url})
    return rows
