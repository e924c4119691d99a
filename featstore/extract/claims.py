"""Claim markers: which process is computing which shard of which embedding set.

Several extracts of one key may run at once (two people, a re-run while one is going, the
ranks of a torchrun job). Before computing a shard, a process claims it by creating
``_claims/<dataset>/<key[:20]>/<shard>.json`` exclusively and atomically (on a local or
network file system: written to a temporary file, then hard-linked to its name, so the
content is there the moment the name exists), holding its owner id, host, pid and a
heartbeat time that a background thread refreshes. Only the claim's owner writes the shard,
so two writers never touch one zarr shard. A claim is stale when its heartbeat is older than
the timeout, or at once when its owner ran on this host and its pid is gone (a SIGKILLed
extract); a stale claim is taken over by whoever first creates its exclusive takeover marker
(``<shard>.json.takeover-<old owner>-<its last heartbeat>``: one marker per stale claim, so
an owner whose claim was taken over and that claims the shard again later can be taken over
again), so exactly one process inherits it. A claim that
cannot be read (what an older featstore killed between create and write left) is stale once
its file is older than the timeout. A process waiting for a live claim says so on stderr:
who holds it, since when, and after how long it takes over.

Claims are objects of the store itself (:class:`featstore.store.objects.StoreObjects`, the
zarr store the embeddings use), so the create is exclusive wherever the store is: a hard link
on a file system, ``PUT`` with ``If-None-Match: *`` on S3 (the loser gets 412), and
``ifGenerationMatch=0`` on GCS. Only where a store has no conditional write
(``StoreObjects.exclusive`` is false: ``memory://``) is a claim written and read back.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from featstore.errors import FeatstoreError
from featstore.store.feature_store import FeatureStore
from featstore.store.layout import CLAIMS_GROUP
from featstore.store.objects import StoreObjects
from featstore.store.objects import pid_alive as _pid_alive

DEFAULT_CLAIM_TIMEOUT = 120.0
CLAIM_TIMEOUT_ENV = "FEATSTORE_CLAIM_TIMEOUT"
#: the longest pause between two heartbeats, whatever this process's own timeout: another
#: process judges a claim by its timeout (the default one, say), not by this one's
MAX_HEARTBEAT_INTERVAL = DEFAULT_CLAIM_TIMEOUT / 4


def claim_timeout(value: float | None = None) -> float:
    """Seconds without a heartbeat after which a claim is stale: ``value``, else
    ``$FEATSTORE_CLAIM_TIMEOUT``, else 120 (``inf``: never).

    Raises FeatstoreError naming the variable when it does not hold a number > 0.
    """
    if value is not None:
        return float(value)
    raw = os.environ.get(CLAIM_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_CLAIM_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:  # nan too
        raise FeatstoreError(f"{CLAIM_TIMEOUT_ENV}={raw}: expected seconds > 0 "
                             "(inf: never taken over)")
    return seconds


class ClaimBoard:
    """The claims of one process on the shards of a store's embedding sets.

    Parameters
    ----------
    store : FeatureStore or str
        The feature store (or its root: a folder or fsspec URL).
    timeout : float
        Seconds without a heartbeat after which another process may take a claim over.
    notify : callable
        Told (one line) when this process waits for another's claim; default: stderr.
    """

    def __init__(self, store: FeatureStore | str, *, timeout: float | None = None,
                 notify: Callable[[str], None] | None = None) -> None:
        if not isinstance(store, FeatureStore):
            store = FeatureStore(store)
        self.files: StoreObjects = store.objects
        self.timeout = claim_timeout(timeout)
        self.owner = uuid.uuid4().hex
        self.host = platform.node()
        self.pid = os.getpid()
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._notify = notify or (lambda line: print(line, file=sys.stderr, flush=True))
        self._told: set[tuple[str, str]] = set()

    @staticmethod
    def path(dataset: str, key: str, shard: int | str) -> str:
        name = f"{shard:06d}" if isinstance(shard, int) else shard
        return f"{CLAIMS_GROUP}/{dataset}/{key}/{name}.json"

    def _record(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": self.host, "pid": self.pid,
                           "heartbeat": time.time()}).encode()

    def read(self, path: str) -> dict[str, Any] | None:
        """The claim record at ``path``, or None when there is none (or it is being written)."""
        raw = self.files.get(path)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def stale(self, record: dict[str, Any]) -> bool:
        """A claim whose owner stopped beating, or died on this host."""
        if record.get("host") == self.host and not _pid_alive(int(record.get("pid", -1))):
            return True
        return time.time() - float(record.get("heartbeat", 0)) > self.timeout

    def try_claim(self, path: str) -> bool:
        """Claim ``path`` for this process; False when a live process holds it."""
        if path in self._held:
            return True
        if self.files.create(path, self._record()):
            self._hold(path)
            return True
        record = self.read(path)
        if record is None:
            if self.files.create(path, self._record()):  # released just now: one more try
                self._hold(path)
                return True
            age = self.files.age(path)
            if age is None or age <= self.timeout:
                return False
            # a claim nobody can read (an older featstore killed between create and write)
            # and no heartbeat for longer than the timeout: stale
            record = {"owner": f"unreadable-{int(time.time() - age)}"}
        elif record.get("owner") == self.owner:
            self._hold(path)
            return True
        elif not self.stale(record):
            self._tell_waiting(path, record)
            return False
        # exactly one process inherits a stale claim: the first to create its takeover marker
        marker = f"{path}.takeover-{record.get('owner')}-{record.get('heartbeat', 0)}"
        if not self.files.create(marker, self._record()):
            return False
        self.files.put(path, self._record())
        self._hold(path)
        return True

    def _tell_waiting(self, path: str, record: dict[str, Any]) -> None:
        """Say once per claim who holds it, since when, and when it will be taken over."""
        key = (path, str(record.get("owner")))
        if key in self._told:
            return
        self._told.add(key)
        beat = float(record.get("heartbeat", time.time()))
        since = time.strftime("%H:%M:%S", time.localtime(beat))
        when = (f"taken over if it stops beating for {self.timeout:g}s"
                if math.isfinite(self.timeout) else "never taken over (claim timeout inf)")
        self._notify(f"waiting for {path.removeprefix(CLAIMS_GROUP + '/')}: claimed by "
                     f"{record.get('host')} pid {record.get('pid')} (heartbeat at {since}); "
                     f"{when}")

    def claim_wait(self, path: str, poll: float = 0.2) -> None:
        """Block until ``path`` is claimed (used as a creation lock)."""
        while not self.try_claim(path):
            time.sleep(poll)

    def still_ours(self, path: str) -> bool:
        """Whether this process still owns ``path`` (False once another took it over)."""
        if path in self._lost:
            return False
        record = self.read(path)
        return record is not None and record.get("owner") == self.owner

    def release(self, path: str) -> None:
        """Drop a claim (after its shard is done, or on exit)."""
        with self._lock:  # the heartbeat thread never rewrites a released claim
            held = path in self._held
            self._held.discard(path)
            if held and self.still_ours(path):
                self.files.delete(path)

    def clear(self, dataset: str, key: str) -> None:
        """Remove the claim folder of a finished embedding set (its markers included)."""
        self.files.delete_prefix(f"{CLAIMS_GROUP}/{dataset}/{key}")

    def close(self) -> None:
        """Stop the heartbeat and release every claim still held."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for path in list(self._held):
            self.release(path)

    def _hold(self, path: str) -> None:
        with self._lock:
            self._held.add(path)
            self._lost.discard(path)
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="featstore-claims",
                                            daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        """Refresh the heartbeat of every held claim, several times per timeout (and at
        least every :data:`MAX_HEARTBEAT_INTERVAL` seconds: an ``inf`` timeout too)."""
        interval = max(min(self.timeout / 4, MAX_HEARTBEAT_INTERVAL), 0.05)
        while not self._stop.wait(interval):
            with self._lock:
                for path in list(self._held):
                    record = self.read(path)
                    if record is not None and record.get("owner") not in (None, self.owner):
                        self._held.discard(path)  # taken over while this process stalled
                        self._lost.add(path)
                        continue
                    self.files.put(path, self._record())
