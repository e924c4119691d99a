"""Progress from inside a long computation (a solve, a head's epochs, a kNN search), for a
front end that asked for it: a line at most every ``EVERY`` seconds, the first once the work
has run that long (a quick run says nothing). Without a sink nothing is formatted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

EVERY = 10.0  # seconds between lines

_sink: ContextVar[tuple[Callable[[str], None], list[float]] | None] = ContextVar(
    "featstore_progress", default=None)


@contextlib.contextmanager
def reporting(sink: Callable[[str], None], every: float | None = None) -> Iterator[None]:
    """Send :func:`tick` lines to ``sink`` inside the block (every ``EVERY`` seconds at
    most, unless ``every``)."""
    token = _sink.set((sink, [time.monotonic(), EVERY if every is None else every]))
    try:
        yield
    finally:
        _sink.reset(token)


def tick(line: str, *args: object) -> None:
    """Report ``line.format(*args)`` when the last line (or the start) is ``EVERY`` seconds
    old (formatted only then)."""
    held = _sink.get()
    if held is None:
        return
    sink, state = held
    now = time.monotonic()
    if now - state[0] >= state[1]:
        state[0] = now
        sink(line.format(*args))
