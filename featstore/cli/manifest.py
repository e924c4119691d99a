"""``featstore manifest build|validate``: canonical manifests from raw release layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featstore.cli._shared import (
    JsonOpt,
    TaskOpt,
    app,
    err,
    load_data,
    out,
    output_path,
    print_json,
    print_notes,
)

manifest_app = typer.Typer(no_args_is_help=True,
                           help="Build canonical manifests from raw release layouts; validate.")
app.add_typer(manifest_app, name="manifest")


@manifest_app.command("build")
def manifest_build(
    kind: Annotated[str, typer.Argument(
        help="pcam, nih, pneumonia, eyepacs, aptos, image-folder or medmnist.")],
    root: Annotated[Path, typer.Argument(help="The release folder (or .npz file).")],
    output: Annotated[Path, typer.Option("--output", "-o", parser=output_path,
                                         help="Manifest CSV to write.")],
    val_fraction: Annotated[float | None, typer.Option(
        help="pneumonia: move this share of the train patients into val (the release's "
             "val has 16 images).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --val-fraction.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Turn a raw release layout into a canonical manifest CSV."""
    from featstore.data.readers import build_release_manifest

    m, spec = build_release_manifest(kind, root, output, val_fraction=val_fraction, seed=seed)
    if not as_json:
        err.print(f"{spec['title']} — {spec['source']} (licence: {spec['licence']}; "
                  f"metric: {spec['metric']}; splits: {spec['splits']})")
    _manifest_summary(m, as_json, written=str(output),
                      spec={k: spec[k] for k in ("source", "licence", "metric", "splits")})


@manifest_app.command("validate")
def manifest_validate(
    file: Annotated[Path, typer.Argument(help="A manifest CSV/Parquet (or any --data value).")],
    check_files: Annotated[bool, typer.Option(
        help="Also open and decode every image: finds missing, unreadable and truncated "
             "files (reads all pixels, so minutes for a large release).")] = False,
    workers: Annotated[int, typer.Option(
        help="Decoding processes for --check-files.")] = 0,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a manifest: columns, ids, splits, labels, groups (and files)."""
    m = load_data(str(file), task=task)
    if check_files:
        from featstore.data.images import check_images

        check_images(m, workers=workers)
    _manifest_summary(m, as_json)


def _manifest_summary(m, as_json: bool, written: str | None = None,
                      spec: dict | None = None) -> None:
    summary = {**m.summary(), "written": written, "spec": spec}
    if as_json:
        print_json(summary)
        return
    from featstore.report.tables import manifest_line

    print_notes(list(m.notes))
    out.print(manifest_line(summary))
