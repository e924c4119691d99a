"""The extraction engine's writer thread: finished shards go to the store behind a bounded
queue, so the model never waits on the store."""

from __future__ import annotations

import queue
import threading

WRITE_QUEUE = 2  # finished shards waiting for the writer thread


class ShardWriter:
    """Writes finished shards on a thread behind a bounded queue, so the model never waits
    on the store (or on a device-to-host copy: a task waits for its copy's event). The
    first error stops the writes and is raised in the main thread; shards queued before it
    are still written, so an interrupted pass keeps every shard it finished."""

    def __init__(self, depth: int = WRITE_QUEUE) -> None:
        self._tasks: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="featstore-writer",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            if self.error is None:
                try:
                    task()
                except BaseException as e:  # handed to the main thread
                    self.error = e

    def submit(self, task) -> None:
        if self.error is not None:
            raise self.error
        self._tasks.put(task)

    def close(self) -> None:
        """Wait for every queued write; raise the first error."""
        self._tasks.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
