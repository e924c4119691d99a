"""A backbone's identity, remembered from its last build on this machine or built now: the
top of the models layer (it may build, so it sits above the builder and imports it only
when it must: a cache hit loads neither torch nor timm)."""

from __future__ import annotations

from featstore.models.identity import BackboneIdentity, remembered
from featstore.models.registry import BackboneSpec, LoadedBackbone


def identify(spec: BackboneSpec) -> BackboneIdentity | LoadedBackbone:
    """The identity of ``spec``: remembered, else built (a :class:`LoadedBackbone`, which
    carries the same fields) and remembered.

    Raises
    ------
    BackboneError
        The spec cannot be built (missing weights, a checkpoint that does not load).
    """
    known = remembered(spec)
    if known is not None:
        return known
    from featstore.models.build import build_backbone  # torch and timm: only to build

    return build_backbone(spec)  # it remembers what it built
