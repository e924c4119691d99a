"""The store's catalog: one small object per embedding set, ``_catalog/<dataset>/<key[:20]>.json``,
holding the row ``featstore ls`` prints (who extracted it, when, on which host, how big).

It is written when a set is created, when it completes and when shards are invalidated, so
``ls`` reads the catalog in one concurrent fetch instead of opening every set's arrays (one
listing per dataset still says which sets exist: an entry without its set is ignored, a set
without an entry -- one written before the catalog -- is read the slow way once and its entry
written, when the store is writable). Entries are per set, never one shared index object, so
concurrent extracts never overwrite each other's rows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featstore.store.objects import StoreObjects

CATALOG_GROUP = "_catalog"
CATALOG_VERSION = 1
SNAPSHOT = f"{CATALOG_GROUP}/snapshot.json"


def entry_key(dataset: str, name: str) -> str:
    return f"{CATALOG_GROUP}/{dataset}/{name}.json"


def publish(objects: StoreObjects, dataset: str, name: str, summary: dict[str, Any]) -> None:
    """Write (or rewrite) the entry of set ``name`` of ``dataset``: its ``summary`` (the row
    ``ls`` prints, :meth:`EmbeddingSet.summary`); a read-only store is left as it is."""
    row = {"catalog": CATALOG_VERSION, **summary}
    try:
        objects.put(entry_key(dataset, name), json.dumps(row).encode())
    except OSError:
        pass


def read_catalog(objects: StoreObjects) -> dict[tuple[str, str], dict[str, Any]]:
    """Every catalog entry, by (dataset group, set name).

    One listing gives every entry's version tag; entries whose tag matches the snapshot
    (``_catalog/snapshot.json``, the rows ``ls`` read last time, each with its tag) come from
    it, the others are fetched concurrently, and the snapshot is rewritten when anything
    changed. The snapshot is only a cache: a row is used only under its current tag.
    """
    tags = {k: t for k, t in objects.versions(CATALOG_GROUP).items()
            if k.count("/") == 2 and k.endswith(".json")}
    try:
        snap = json.loads(objects.get(SNAPSHOT) or b"{}")
    except ValueError:
        snap = {}
    cached = snap.get("entries", {}) if snap.get("catalog") == CATALOG_VERSION else {}
    rows = {k: cached[k]["row"] for k, t in tags.items()
            if k in cached and cached[k].get("tag") == t}
    fetched = objects.get_many([k for k in tags if k not in rows])
    for key, raw in fetched.items():
        try:
            row = json.loads(raw)
        except ValueError:
            continue  # a damaged entry: the set is read the slow way
        if row.pop("catalog", None) == CATALOG_VERSION:
            rows[key] = row
    if fetched or set(cached) - set(tags):
        snapshot = {"catalog": CATALOG_VERSION,
                    "entries": {k: {"tag": tags[k], "row": r} for k, r in rows.items()}}
        try:
            objects.put(SNAPSHOT, json.dumps(snapshot).encode())
        except OSError:
            pass  # a read-only store: the next ls fetches the entries again
    entries = {}
    for key, row in rows.items():
        _, dataset, name = key.split("/")
        entries[dataset, name.removesuffix(".json")] = row
    return entries
