"""Fusion of several backbones' cached embeddings: DVME and its baselines.

Names load on first use (:mod:`featstore._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featstore._lazy import lazy_exports

_EXPORTS = {
    "ATTENTIONS": "featstore.choices",
    "DVME": "featstore.fusion.dvme",
    "FuseRecord": "featstore.fusion.run",
    "check_aligned": "featstore.fusion.run",
    "fuse_embeddings": "featstore.fusion.run",
    "fuse_grid": "featstore.fusion.run",
    "fusion_run_ids": "featstore.fusion.run",
    "stored_fusion_records": "featstore.fusion.run",
}
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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from featstore.choices import ATTENTIONS
    from featstore.fusion.dvme import DVME
    from featstore.fusion.run import (
        FuseRecord,
        check_aligned,
        fuse_embeddings,
        fuse_grid,
        fusion_run_ids,
        stored_fusion_records,
    )
