"""Release layouts: one module per public release, each defining its :class:`Layout` (name,
detector, builder) once, and the registry of them all.

==============  =============================================  ==========================
kind            module                                         looks like
==============  =============================================  ==========================
pcam            :mod:`~featstore.data.layouts.pcam`            camelyonpatch_*.h5 files
nih             :mod:`~featstore.data.layouts.nih`             Data_Entry_2017.csv
pneumonia       :mod:`~featstore.data.layouts.pneumonia`       a chest_xray/ folder
eyepacs, aptos  :mod:`~featstore.data.layouts.retinopathy`     trainLabels.csv, train.csv
image-folder    :mod:`~featstore.data.layouts.image_folder`    any other folder
medmnist        :mod:`~featstore.data.layouts.medmnist`        an .npz file
==============  =============================================  ==========================

Each layout takes its file names, label names and split rule from its spec
(:mod:`featstore.data.specs`). The canonical manifest table (CSV, Parquet) is not a release
layout: :mod:`~featstore.data.layouts.table`.
"""

from __future__ import annotations

from pathlib import Path

from featstore.data.layouts import image_folder, medmnist, nih, pcam, pneumonia, retinopathy
from featstore.data.layouts._layout import Layout

# In detection order: the first layout whose detector accepts a path reads it, so the
# catch-all image folder comes after every folder-shaped release.
LAYOUTS: dict[str, Layout] = {layout.kind: layout for layout in (
    pcam.LAYOUT, nih.LAYOUT, pneumonia.LAYOUT, retinopathy.EYEPACS, retinopathy.APTOS,
    image_folder.LAYOUT, medmnist.LAYOUT,
)}
# kind -> builder(path, **opts) -> Manifest, for `featstore manifest build KIND PATH`
BUILDERS = {kind: layout.build for kind, layout in LAYOUTS.items()}


def detect_layout(path: Path) -> Layout | None:
    """The first registered layout that recognises ``path``, or None."""
    return next((layout for layout in LAYOUTS.values() if layout.detect(path)), None)


__all__ = ["BUILDERS", "LAYOUTS", "Layout", "detect_layout"]
