"""The canonical manifest table: read a CSV (or Parquet) manifest, write a manifest as CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from featstore.data.manifest import Manifest, build_manifest
from featstore.errors import ManifestError

TABLE_SUFFIXES = (".csv", ".parquet")
SIDECAR_SUFFIX = ".json"  # manifest.csv -> manifest.csv.json: what the columns cannot say
SIDECAR_VERSION = 1


def sidecar_path(table: Path) -> Path:
    """Where a manifest table's sidecar lives: ``<table>.json`` beside it."""
    return table.with_name(table.name + SIDECAR_SUFFIX)


def _read_sidecar(table: Path) -> dict:
    """The task, classes and notes ``manifest build`` recorded for a table ({} if none).

    Raises ManifestError naming the sidecar when it is not the JSON featstore writes.
    """
    side = sidecar_path(table)
    if not side.exists():
        return {}
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("featstore_manifest") != SIDECAR_VERSION:
            raise ValueError("not a featstore manifest sidecar")
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{side}: unreadable manifest sidecar ({e}); fix or delete it") \
            from None
    return meta


def read_manifest_table(path: str | Path, *, root: str | Path | None = None,
                        task: str | None = None) -> Manifest:
    """Read a manifest table (CSV, or Parquet with pandas) and validate it.

    Paths are relative to ``root``, by default the table's folder. A sidecar
    ``<table>.json`` (written by ``manifest build``) gives the task (unless ``task`` is
    given), the classes and the notes. Errors name the CSV line (header = line 1) of the
    offending row.

    Raises
    ------
    ManifestError
        An unreadable table or sidecar, a ragged row, or an invalid row, naming the line.
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        try:
            import pandas as pd
        except ImportError:
            raise ManifestError(
                f"{path}: reading Parquet needs pandas and pyarrow "
                "(pip install 'featstore[parquet]')"
            ) from None
        frame = pd.read_parquet(path)
        columns = {str(c): ["" if v is None else str(v) for v in frame[c].tolist()]
                   for c in frame.columns}
        row_label, first_row = "row", 0
    else:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM is fine
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    raise ManifestError(f"{path}: empty file, expected a header line")
                header = [h.strip() for h in header]
                rows = list(reader)
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path}: not a UTF-8 CSV file ({e.reason})") from None
        for line, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise ManifestError(
                    f"{path.name}: line {line}: {len(row)} fields, header has {len(header)}"
                )
        columns = {h: [r[j] for r in rows] for j, h in enumerate(header)}
        row_label, first_row = "line", 2
    meta = _read_sidecar(path)
    return build_manifest(
        path.stem, columns, root=root if root is not None else path.parent,
        task=task or meta.get("task"), num_classes=meta.get("num_classes"),
        classes=meta.get("classes"), notes=tuple(meta.get("notes", ())),
        row_label=row_label, first_row=first_row,
    )


def _csv_path(file: Path, here: Path) -> str:
    """``file`` relative to ``here`` when it is inside it, else absolute (POSIX form)."""
    try:
        return file.relative_to(here).as_posix()
    except ValueError:
        return file.as_posix()


def write_manifest_csv(manifest: Manifest, path: str | Path) -> Path:
    """Write ``manifest`` as a canonical CSV -- paths relative to the CSV's folder for files
    inside it, absolute for the others (a manifest path never climbs out with ``..``) -- and
    beside it ``<csv>.json`` with what the columns cannot say (task, classes, notes), so
    reading the CSV back gives the same task (an ordinal grading stays ordinal).

    Reading the CSV back gives the same rows, labels and groups.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    here = path.parent.resolve()
    multilabel = manifest.task == "multilabel"
    label_cols = [f"label_{n}" for n in manifest.label_names] if multilabel else ["label"]
    header = ["id", "split", "path", *label_cols]
    if manifest.array_keys is not None:
        header += ["array", "index"]
    if manifest.group is not None:
        header.append("group")
    rel = {p: _csv_path(Path(manifest.root).resolve() / p, here)
           for p in np.unique(manifest.paths)}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(len(manifest)):
            row = [manifest.ids[i], manifest.split[i], rel[manifest.paths[i]],
                   *manifest.labels[i].tolist()]
            if manifest.array_keys is not None:
                row += [manifest.array_keys[i], int(manifest.index[i])]
            if manifest.group is not None:
                row.append(manifest.group[i])
            w.writerow(row)
    sidecar_path(path).write_text(json.dumps({
        "featstore_manifest": SIDECAR_VERSION, "task": manifest.task,
        "num_classes": manifest.num_classes,
        "classes": list(manifest.classes) if manifest.classes else None,
        "label_names": list(manifest.label_names), "notes": list(manifest.notes),
    }, indent=1) + "\n", encoding="utf-8")
    return path
