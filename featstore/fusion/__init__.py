"""Fusion of several backbones' cached embeddings: DVME and its baselines."""

from featstore.fusion.dvme import ATTENTIONS, DVME
from featstore.fusion.run import (
    FuseRecord,
    check_aligned,
    fuse_embeddings,
    fuse_grid,
    fusion_run_ids,
    stored_fusion_records,
)

__all__ = [
    "ATTENTIONS",
    "DVME",
    "FuseRecord",
    "check_aligned",
    "fuse_embeddings",
    "fuse_grid",
    "fusion_run_ids",
    "stored_fusion_records",
]
