"""Backbones: the spec registry, checkpoint adapters and preprocessing."""

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

__all__ = [
    "RANDOM",
    "BackboneSpec",
    "CheckpointAdapter",
    "LoadedBackbone",
    "Preprocessing",
    "build_backbone",
    "list_specs",
    "load_checkpoint_strict",
    "parse_backbone",
    "register_spec",
]
