"""Backbones: the spec registry, checkpoint adapters and preprocessing.

Specs, the zoo, preprocessing records and the weights lookup import neither torch nor timm;
:func:`build_backbone` and :func:`load_checkpoint_strict` load them on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featstore.models import registry, zoo  # noqa: F401  (zoo registers the study's backbones)
from featstore.models.preprocessing import Preprocessing
from featstore.models.registry import (
    RANDOM,
    BackboneSpec,
    CheckpointAdapter,
    LoadedBackbone,
    list_specs,
    parse_backbone,
    register_spec,
    spec_rows,
)
from featstore.models.weights import download_weights, find_weights, resolve_weights

if TYPE_CHECKING:
    from featstore.models.build import build_backbone
    from featstore.models.checkpoint import load_checkpoint_strict

__all__ = [
    "RANDOM",
    "BackboneSpec",
    "CheckpointAdapter",
    "LoadedBackbone",
    "Preprocessing",
    "build_backbone",
    "download_weights",
    "find_weights",
    "list_specs",
    "load_checkpoint_strict",
    "parse_backbone",
    "register_spec",
    "resolve_weights",
    "spec_rows",
]


def __getattr__(name: str) -> Any:
    # only names not bound above reach here: build_backbone, load_checkpoint_strict, which the
    # registry imports on first use
    if name in __all__:
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
