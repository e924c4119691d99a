"""Drawing a labelled fraction (`select_fraction`) at PatchCamelyon's train size, without
patient groups (every row its own group): the vectorised draw against the per-group loop it
replaced, side by side, checking both draw the very same rows.

    python benchmarks/fraction_draw.py [--rows 16384,65536,262144] [--loop-max 65536] [--runs 3]

The loop is quadratic here (one `np.unique(y[inverse == g])` per group): it is timed up to
--loop-max rows only (PCam's 262,144 took 20 s a draw, for every (fraction < 1, seed)).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featstore.data.fractions import select_fraction  # noqa: E402
from tests.data.test_fractions import _select_fraction_as_before  # noqa: E402


def timed(fn, args: tuple, runs: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="16384,65536,262144")
    ap.add_argument("--loop-max", type=int, default=65536)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"select_fraction, fraction 0.01, binary labels, no patient groups, median of "
          f"{args.runs}")
    print(f"{'rows':>8} {'vectorised s':>13} {'per-group loop s':>17} {'loop / vec':>11} same")
    for n in (int(v) for v in args.rows.split(",")):
        rng = np.random.default_rng(0)
        labels, groups, rows = rng.integers(0, 2, (n, 1)), np.full(n, "", object), np.arange(n)
        draw = (rows, labels, groups, 0.01, 0)
        vec, got = timed(select_fraction, draw, args.runs)
        if n <= args.loop_max:
            loop, want = timed(_select_fraction_as_before, draw, 1)
            print(f"{n:>8} {vec:>13.3f} {loop:>17.3f} {loop / vec:>10.1f}x "
                  f"{np.array_equal(got, want)}")
        else:
            print(f"{n:>8} {vec:>13.3f} {'(not run)':>17} {'':>11} -")


if __name__ == "__main__":
    main()
