"""Backbones: the spec registry, checkpoint adapters and preprocessing."""

from featstore.models import zoo  # noqa: F401  (registers the study's backbones)
from featstore.models.preprocessing import Preprocessing
from featstore.models.registry import (
    RANDOM,
    BackboneSpec,
    CheckpointAdapter,
    LoadedBackbone,
    build_backbone,
    list_specs,
    load_checkpoint_strict,
    parse_backbone,
    register_spec,
)
from featstore.models.weights import download_weights, find_weights, resolve_weights

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
]
