"""Run logs: the runs of one kind (probe runs of a set, fusion and finetuning runs of a
dataset), each a group whose attrs hold its config and records, by run id.

A store that cannot be written (read-only credentials, a read-only mount) does not lose a
run: it is written to the same path in the results store (``--results-store``), noted once,
and read back from there as if it were in the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from featstore.errors import StoreError
from featstore.store.backend import READ_ONLY_ERRORS
from featstore.store.layout import require_group

if TYPE_CHECKING:
    from featstore.store.feature_store import FeatureStore


class RunLog:
    """The runs of ``kind`` under ``group`` (whose path in the store is ``path``)."""

    def __init__(self, store: FeatureStore, group: zarr.Group, path: str, kind: str) -> None:
        self.store = store
        self.group = group
        self.path = path
        self.kind = kind

    def __repr__(self) -> str:
        return f"RunLog({self.path}/{self.kind})"

    def _places(self) -> list[zarr.Group]:
        """The store's group, then its mirror in the results store (where there is one)."""
        mirror = self.store._results_group(self.path, create=False)
        return [self.group] + ([mirror] if mirror is not None else [])

    def save(self, run_id: str, payload: dict[str, Any]) -> None:
        """Write a run under ``<group>/<kind>/<run_id>``; when the store cannot be written,
        to the same path in the results store, and note it once.

        Raises
        ------
        StoreError
            The store is read-only and there is no results store.
        """
        payload = to_json(payload)
        try:
            require_group(require_group(self.group, self.kind), run_id).attrs.update(payload)
            return
        except READ_ONLY_ERRORS as e:
            error = e
        store = self.store
        mirror = store._results_group(self.path, create=True)
        if mirror is None:
            raise StoreError(f"store {store.root} cannot be written ({error.__class__.__name__}"
                             f": {error}); pass --results-store DIR to keep runs elsewhere"
                             ) from None
        require_group(require_group(mirror, self.kind), run_id).attrs.update(payload)
        store._note(f"store {store.root} cannot be written ({error.__class__.__name__}): runs "
                    f"are saved to the results store {store.results_root}")

    def get(self, run_id: str) -> dict[str, Any] | None:
        """A persisted run (its config and records): from the store, else the results
        store; None when neither has it."""
        for g in self._places():
            runs = g.get(self.kind)
            if runs is not None and run_id in runs:
                return dict(runs[run_id].attrs)
        return None

    def first(self, run_ids: Iterable[str]) -> dict[str, Any] | None:
        """The run persisted under the first of ``run_ids`` that has one (a run's id today,
        then the ids an earlier featstore gave it); None when none has."""
        return next(filter(None, map(self.get, run_ids)), None)

    def by_id(self) -> dict[str, dict[str, Any]]:
        """Every persisted run by id: the store's, then the results store's it lacks."""
        seen: dict[str, dict[str, Any]] = {}
        for g in self._places():
            runs = g.get(self.kind)
            if runs is not None:
                for name, run in sorted(runs.groups()):
                    seen.setdefault(name, dict(run.attrs))
        return seen

    def all(self) -> list[dict[str, Any]]:
        """Every persisted run."""
        return list(self.by_id().values())


def to_json(obj: Any) -> Any:
    """NaN/inf are not JSON: stored as None (undefined metrics stay undefined)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj
