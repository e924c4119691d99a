"""The record every release layout registers: its name, its detector and its builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featstore.data.manifest import Manifest


@dataclass(frozen=True)
class Layout:
    """A release layout: its name in ``KIND:PATH``, how to recognise it, how to read it.

    Parameters
    ----------
    kind : str
        The layout's name (``pcam``, ``nih``, ...), also the name of its spec.
    detect : callable
        ``detect(path) -> bool``: does this file or folder look like the layout?
    build : callable
        ``build(path, **opts) -> Manifest``: read the release at ``path``.
    task : str or None
        The release's own task; None when the files decide, and then a requested task is
        passed to ``build`` as ``task=``.
    """

    kind: str
    detect: Callable[[Path], bool]
    build: Callable[..., Manifest]
    task: str | None = None

    def read(self, path: Path, *, task: str | None = None) -> Manifest:
        """The manifest of the release at ``path``; ``task`` applies when the files decide it.

        Raises
        ------
        ManifestError
            The release is incomplete or one of its rows is invalid, naming the file or row.
        """
        return self.build(path) if self.task else self.build(path, task=task)
