"""Claims never hang: created atomically, an unreadable claim goes stale after the timeout,
and a process that waits says for whom."""

from __future__ import annotations

import os
import threading
import time

from featstore.extract.claims import ClaimBoard


def test_a_claim_has_its_content_the_moment_its_name_exists(tmp_path):
    board = ClaimBoard(str(tmp_path), timeout=5)
    path = ClaimBoard.path("ds", "key", 0)
    seen = []
    stop = threading.Event()

    def watch() -> None:  # a reader polling the name never sees an empty or partial claim
        f = tmp_path / path
        while not stop.is_set():
            try:
                seen.append(f.read_bytes())
            except FileNotFoundError:  # released between two polls
                pass

    t = threading.Thread(target=watch)
    t.start()
    for _ in range(50):
        assert board.try_claim(path)
        deadline = time.monotonic() + 5  # a loaded machine may not run the reader at once:
        while not seen and time.monotonic() < deadline:  # it reads one claim at least
            time.sleep(0.001)
        board.release(path)
    stop.set()
    t.join()
    assert seen and all(raw.startswith(b"{") and raw.endswith(b"}") for raw in seen)
    assert not list((tmp_path / path).parent.glob("*.tmp"))  # no temporary files left


def test_an_empty_claim_is_stale_after_the_timeout_not_forever(tmp_path):
    """What an older featstore left when killed between exclusive create and write."""
    path = ClaimBoard.path("ds", "key", 2)
    f = tmp_path / path
    f.parent.mkdir(parents=True)
    f.write_bytes(b"")
    board = ClaimBoard(str(tmp_path), timeout=0.5)
    assert not board.try_claim(path)  # fresh: it may still be being written
    old = time.time() - 2
    os.utime(f, (old, old))
    assert board.try_claim(path) and board.still_ours(path)
    board.close()


def test_waiting_for_a_live_claim_says_who_holds_it(tmp_path):
    path = ClaimBoard.path("ds", "key", 1)
    holder = ClaimBoard(str(tmp_path), timeout=30)
    assert holder.try_claim(path)
    said: list[str] = []
    waiter = ClaimBoard(str(tmp_path), timeout=30, notify=said.append)
    assert not waiter.try_claim(path) and not waiter.try_claim(path)
    assert len(said) == 1  # once per claim, not once per poll
    assert f"pid {os.getpid()}" in said[0] and holder.host in said[0]
    assert "ds/key/000001.json" in said[0] and "30s" in said[0]
    holder.close()
    waiter.close()


def test_an_owner_stale_twice_on_one_shard_is_taken_over_twice(tmp_path):
    """A stalled process whose claim was taken over may claim the shard again later (after
    the new owner released it) and stall again: that claim must not be stuck forever."""
    import json

    path = ClaimBoard.path("ds", "key", 2)
    for attempt in range(2):
        stale = {"owner": "stalled", "host": "elsewhere", "pid": 1,
                 "heartbeat": time.time() - 60 - attempt}
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps(stale))
        taker = ClaimBoard(str(tmp_path), timeout=5)
        assert taker.try_claim(path), attempt
        taker.close()  # releases: the claim file is gone, the takeover marker stays


def test_an_infinite_timeout_never_expires_and_its_heartbeat_keeps_beating(tmp_path,
                                                                           monkeypatch):
    """``--claim-timeout inf`` is documented as "never": the heartbeat thread lives on (it
    used to die of OverflowError) and beats often enough for a process whose timeout is
    finite, which judges the claim by its own timeout."""
    from featstore.extract import claims

    monkeypatch.setattr(claims, "MAX_HEARTBEAT_INTERVAL", 0.05)  # 30 s in real life
    died: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    path = ClaimBoard.path("ds", "key", 4)
    holder = ClaimBoard(str(tmp_path), timeout=float("inf"))
    assert holder.try_claim(path)
    first = holder.read(path)["heartbeat"]
    deadline = time.monotonic() + 10
    while holder.read(path)["heartbeat"] == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not died and holder.read(path)["heartbeat"] > first
    said: list[str] = []
    waiter = ClaimBoard(str(tmp_path), timeout=0.5, notify=said.append)
    time.sleep(1.0)  # twice the waiter's timeout: only a beating claim is still live
    assert not waiter.try_claim(path) and holder.still_ours(path)
    assert not ClaimBoard(str(tmp_path), timeout=float("inf"), notify=said.append
                          ).try_claim(path)
    assert "never taken over" in said[-1]
    holder.close()
    waiter.close()
    assert not died


def test_extract_with_claim_timeout_inf_runs_with_its_heartbeat_alive(capsys, monkeypatch,
                                                                     npz_file, store_dir):
    from tests.conftest import SIZE, TINY, cli

    died: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    code, out, err = cli(capsys, "extract", "--data", str(npz_file), "-b", TINY,
                         "--image-size", str(SIZE), "--store", str(store_dir),
                         "--claim-timeout", "inf")
    assert code == 0 and "1 shards written" in out, err
    assert not died and "Traceback" not in err
