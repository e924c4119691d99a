"""Any ``<root>/<split>/<class>/*.{png,jpg,jpeg}`` tree, e.g. the paediatric chest X-rays."""

from __future__ import annotations

from pathlib import Path

from featstore.data.layouts._layout import Layout
from featstore.data.manifest import SPLITS, Manifest, build_manifest
from featstore.data.specs import load_spec
from featstore.errors import ManifestError

IMAGE_SUFFIXES: tuple[str, ...] = tuple(load_spec("image-folder")["layout"]["suffixes"])


def read_image_folder(root: str | Path, *, task: str | None = None) -> Manifest:
    """Build a manifest from ``<root>/<split>/<class>/*.{png,jpg,jpeg}``.

    Class indices follow the sorted class-folder names across all splits. Ids are the
    paths relative to ``root`` (``train/NORMAL/IM-0001.jpeg``).

    Raises
    ------
    ManifestError
        No split folders, a folder that is not a split, no class folders or no images.
    """
    root = Path(root)
    split_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not split_dirs:
        raise ManifestError(f"{root}: no split folders (expected {', '.join(SPLITS)})")
    for d in split_dirs:
        if d.name not in SPLITS:
            raise ManifestError(
                f"{root}: folder {d.name!r} is not a split (expected {', '.join(SPLITS)})"
            )
    classes = sorted({c.name for d in split_dirs for c in d.iterdir()
                      if c.is_dir() and not c.name.startswith(".")})
    if not classes:
        names = ", ".join(d.name for d in split_dirs)
        raise ManifestError(f"{root}: no class folders under {names}")
    cols: dict[str, list[str]] = {"id": [], "split": [], "path": [], "label": []}
    for d in split_dirs:
        for k, cls in enumerate(classes):
            cdir = d / cls
            if not cdir.is_dir():
                continue
            for f in sorted(cdir.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                    continue
                rel = f.relative_to(root).as_posix()
                cols["id"].append(rel)
                cols["split"].append(d.name)
                cols["path"].append(rel)
                cols["label"].append(str(k))
    if not cols["id"]:
        raise ManifestError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images under "
                            "<split>/<class>/")
    return build_manifest(root.resolve().name, cols, root=root, task=task,
                          num_classes=len(classes), classes=classes)


# Every folder qualifies: the registry asks the release layouts first.
LAYOUT = Layout("image-folder", detect=Path.is_dir, build=read_image_folder)
