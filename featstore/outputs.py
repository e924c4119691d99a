"""Files a command writes outside the store where the user says (a report, an export, the
fusion heads): a path that cannot be written is one error naming the option and the path,
and a refused or failed output leaves nothing behind that it created."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from featstore.errors import FeatstoreError


def _about(e: OSError, path: Path) -> bool:
    """Whether ``e`` concerns ``path``: a file in it, one of its parents, or no file named
    (a full disk says no file)."""
    if e.filename is None:
        return True
    named = Path(str(e.filename)).absolute()
    target = path.absolute()
    return named.is_relative_to(target) or target.is_relative_to(named)


@contextlib.contextmanager
def output_errors(path: str | Path, flag: str) -> Iterator[None]:
    """An OSError about ``path`` inside becomes a FeatstoreError naming ``flag`` and
    ``path`` as the user gave them (``--heads-dir /proc/x: cannot write there (No such file
    or directory)``)."""
    try:
        yield
    except OSError as e:
        if not _about(e, Path(path)):
            raise
        raise FeatstoreError(f"{flag} {path}: cannot write there ({_why(e, Path(path))})") from e


def _why(e: OSError, path: Path) -> str:
    """Why ``path`` cannot be written, in words: a file where a folder must be, else the
    system's reason."""
    if isinstance(e, FileExistsError | NotADirectoryError):
        for p in (path, *path.parents):
            if p.exists() and not p.is_dir():
                return f"{p} is a file, not a folder"
    return e.strerror or str(e)


@contextlib.contextmanager
def new_output(path: str | Path, flag: str, *, folder: bool = True) -> Iterator[Path]:
    """Write an output at ``path``: a folder, created with its missing parents (``folder``),
    or a file, its missing parent folders created. Errors as :func:`output_errors`; on any
    error inside, what this created (the file, the topmost new folder) is removed.

    Raises
    ------
    FeatstoreError
        ``path`` (or a folder on the way) cannot be created or written.
    """
    path = Path(path)
    made = path if not path.exists() else None
    for parent in path.parents:  # the topmost folder that does not exist yet
        if parent.exists():
            break
        made = parent
    try:
        with output_errors(path, flag):
            (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
            yield path
    except BaseException:
        if made is not None and made.is_dir():
            shutil.rmtree(made, ignore_errors=True)
        elif made is not None:
            with contextlib.suppress(OSError):  # never there, or under a file
                made.unlink()
        raise
