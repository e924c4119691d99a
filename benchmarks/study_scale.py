"""The study's cached stages at the paper's dataset sizes: wall and peak RSS per stage, each
beside the obvious alternative measured in the same run.

    python benchmarks/study_scale.py [--scale 1.0] [--datasets pcam,nih,eyepacs,pneumonia]
                                     [--stages read,linear,knn,fuse,fuse-small,results,report]
                                     [--work DIR] [--keep]

Writes synthetic stores of the paper's shapes through the store's own writer (five sets a
dataset: four 2,048-d and one 384-d, float16, a class signal of another strength in each,
embeddings with a low-rank correlated part as real ones have):

    pcam       327,680 rows (train 262,144 / val 32,768 / test 32,768), binary, no groups
    nih        112,120 rows (train+val 86,524 by patient / test 25,596), 14 labels, patients
    eyepacs     88,702 rows (train 35,126 / val 10,906 / test 42,670), 5 ordinal grades
    pneumonia    5,856 rows (train 5,216 / val 16 / test 624), binary

then runs the cached grid through the CLI as ``featstore run`` would, each command in its own
process (peak RSS is that process's high-water mark, ``ru_maxrss``):

    read        a verified read of one set             vs np.load of the same matrix (.npy)
    linear      probe one set, 0.01/0.1/1.0 x 3 seeds  vs sklearn LogisticRegression at ONE C
                                                         on the standardised float32 matrix
    seeds       probe one set, fraction 1 x 3 seeds    vs the same with 1 seed
    knn         probe --probe knn, fraction 1, 1 seed  vs a numpy blocked top-k (same k, same
                                                         queries), and the GFLOP/s of both
                                                         beside a plain matmul of one block
    fuse        fuse the five, f = 1, 1 seed (softmax, concat + singles)
    fuse-small  fuse the five, f = 0.01
    results     results --json
    report      report (tables, curves, attention, map)

``--scale 0.1`` keeps every shape but a tenth of the rows (a quick run); ``--keep`` leaves
the stores in ``--work``, and a later run reuses a store it finds there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import write_set  # noqa: E402

from featstore.data.manifest import build_manifest  # noqa: E402
from featstore.data.readers import write_manifest_csv  # noqa: E402
from featstore.store import FeatureStore  # noqa: E402

DIMS = (2048, 2048, 2048, 2048, 384)
ALIASES = ("r50-sup", "r50-simclr", "r50-swav", "r50-dino", "vits16-dino")
STRENGTH = (0.9, 0.7, 0.6, 0.8, 0.5)  # class signal per backbone
SHARD_ROWS = 1024


@dataclass
class Shape:
    name: str
    task: str
    splits: dict[str, int]
    labels: int = 1  # multilabel: label count; ordinal/multiclass: classes
    patients: int = 0  # rows per patient on average (0: no groups)


SHAPES = {
    "pcam": Shape("pcam", "binary", {"train": 262_144, "val": 32_768, "test": 32_768}, 2),
    "nih": Shape("nih", "multilabel", {"train": 86_524, "test": 25_596}, 14, patients=4),
    "eyepacs": Shape("eyepacs", "ordinal", {"train": 35_126, "val": 10_906, "test": 42_670}, 5,
                     patients=2),
    "pneumonia": Shape("pneumonia", "binary", {"train": 5_216, "val": 16, "test": 624}, 2),
}


def _labels(shape: Shape, n: int, rng: np.random.Generator) -> np.ndarray:
    if shape.task == "multilabel":
        prevalence = np.linspace(0.02, 0.18, shape.labels)
        return (rng.random((n, shape.labels)) < prevalence).astype(np.int64)
    if shape.task == "ordinal":  # DR grades: most images grade 0
        return rng.choice(shape.labels, size=n, p=[0.73, 0.07, 0.15, 0.03, 0.02])[:, None]
    return rng.integers(0, shape.labels, size=n)[:, None]


def make_dataset(work: Path, shape: Shape, scale: float) -> tuple[Path, FeatureStore]:
    """The manifest (csv + sidecar) and a store holding the five sets (reused when there)."""
    folder = work / shape.name
    csv = folder / f"{shape.name}.csv"
    store = FeatureStore(folder / "store")
    done = folder / "done"
    if done.exists():
        return csv, store
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pixels.bin").write_bytes(b"synthetic")
    rng = np.random.default_rng(0)
    split = np.concatenate([[s] * max(2, round(n * scale)) for s, n in shape.splits.items()])
    n = len(split)
    y = _labels(shape, n, rng)
    cols = {"id": [f"r{i:07d}" for i in range(n)], "split": list(split),
            "path": ["pixels.bin"] * n}
    if shape.task == "multilabel":
        for k in range(shape.labels):
            cols[f"label_f{k}"] = [str(v) for v in y[:, k]]
    else:
        cols["label"] = [str(v) for v in y[:, 0]]
    if shape.patients:
        cols["group"] = [f"{s}-p{i // shape.patients:07d}" for i, s in enumerate(split)]
    m = build_manifest(shape.name, cols, root=folder, task=shape.task,
                       num_classes=None if shape.task == "multilabel" else shape.labels)
    write_manifest_csv(m, csv)
    y = m.labels.astype(np.float32)  # rows in manifest (id) order
    for alias, dim, strength in zip(ALIASES, DIMS, STRENGTH, strict=True):
        X = _embeddings(y, dim, strength, rng)
        write_set(store, m, X, {"bench": "study_scale", "alias": alias}, alias)
        del X
    done.write_text("ok")
    return csv, store


def _embeddings(y: np.ndarray, dim: int, strength: float,
                rng: np.random.Generator) -> np.ndarray:
    """float16 (N, dim): a rank-32 correlated part, noise, and the labels' signal spread
    over 16 directions."""
    n = len(y)
    factors = rng.standard_normal((32, dim)).astype(np.float32) * 0.5
    signal = rng.standard_normal((y.shape[1], dim)).astype(np.float32)
    signal *= strength / np.sqrt(dim / 16)
    X = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 16384):
        b = slice(start, min(start + 16384, n))
        block = rng.standard_normal((b.stop - b.start, 32)).astype(np.float32) @ factors
        block += rng.standard_normal((b.stop - b.start, dim), dtype=np.float32)
        block += (y[b] - y.mean(0)) @ signal * 4
        X[b] = block
    return X


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS GiB, stdout) of one command in its own process, its high-water mark
    as ``/usr/bin/time`` reports it (a child forked from this process would count this
    process's RSS in its own: Linux keeps the forked copy's high-water mark across exec).
    A command that prints ``TIME <s>`` times itself (the part measured, in-process)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rss"
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), *cmd],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
        timed = [line.split()[1] for line in proc.stdout.splitlines()
                 if line.startswith("TIME ")]
        wall = float(timed[-1]) if timed else wall
        return wall, int(report.read_text().split()[-1]) / 2**20, proc.stdout


PY = sys.executable
FEATSTORE = [PY, "-m", "featstore"]


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def stages_for(shape: Shape, csv: Path, store: FeatureStore, work: Path,
               stages: list[str]) -> list[tuple[str, str, list[str], str, list[str]]]:
    """(stage, featstore command's name, command, alternative's name, alternative)."""
    root = str(store.root)
    common = ["--data", str(csv), "--store", root]
    es = store.dataset(csv_manifest(csv)).embedding_set(ALIASES[0])
    npy = work / shape.name / "set0.npy"
    out = []
    if "read" in stages:
        if not npy.exists():
            np.save(npy, es.read())
        best = "min(timeit.repeat(lambda: {}, number=1, repeat=3))"
        out.append(("read", "verified read of one set (in-process, best of 3)",
                    py(f"from featstore.store import FeatureStore as F; import sys, timeit; "
                       f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                       f"from study_scale import csv_manifest as m; "
                       f"es = F({root!r}).dataset(m({str(csv)!r})).embedding_set("
                       f"{ALIASES[0]!r}); print('TIME', {best.format('es.read()')})"),
                    "np.load (best of 3)",
                    py(f"import numpy as np, timeit; "
                       f"print('TIME', {best.format(f'np.load({str(npy)!r})')})")))
    if "linear" in stages:
        out.append(("linear", "probe 0.01/0.1/1 x 3 seeds",
                    FEATSTORE + ["probe", *common, "-b", ALIASES[0], "--fractions",
                                 "0.01,0.1,1.0", "--seeds", "3", "--recompute", "--json"],
                    "sklearn LR, one C, f=1", py(_sklearn_code(shape, root, csv))))
    if "seeds" in stages:
        one = FEATSTORE + ["probe", *common, "-b", ALIASES[0], "--fractions", "1.0",
                           "--recompute", "--json", "--seeds"]
        out.append(("seeds", "probe f=1, 3 seeds (one fit, scored per seed)", one + ["3"],
                    "the same, 1 seed", one + ["1"]))
    if "knn" in stages:
        out.append(("knn", "probe knn f=1 x 1 seed",
                    FEATSTORE + ["probe", *common, "-b", ALIASES[0], "--probe", "knn",
                                 "--fractions", "1.0", "--seeds", "1", "--recompute", "--json"],
                    "numpy blocked top-k", py(_numpy_knn_code(shape, root, csv))))
    fuse = FEATSTORE + ["fuse", *common, *sum((["-b", a] for a in ALIASES), []),
                        "--seeds", "1", "--attention", "softmax", "--recompute", "--json"]
    if "fuse" in stages:
        out.append(("fuse", "fuse five f=1 (concat, singles, DVME)",
                    fuse + ["--fractions", "1.0"], "", []))
    if "fuse-small" in stages:
        out.append(("fuse-small", "fuse five f=0.01", fuse + ["--fractions", "0.01"], "", []))
    if "results" in stages:
        out.append(("results", "results --json",
                    FEATSTORE + ["results", *common, "--json"], "", []))
    if "report" in stages:
        out.append(("report", "report", FEATSTORE + ["report", "--store", root, "-o",
                                                     str(work / shape.name / "report")],
                    "", []))
    return out


def csv_manifest(csv: str | Path):
    from featstore.data.readers import load_dataset

    return load_dataset(str(csv))


def _load_code(root: str, csv: str) -> str:
    return (f"import sys, numpy as np; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from study_scale import csv_manifest; from featstore.store import FeatureStore; "
            f"es = FeatureStore({root!r}).dataset(csv_manifest({csv!r})).embedding_set("
            f"{ALIASES[0]!r}); idx = es.dataset.index; s = idx['split']; "
            f"X = es.read().astype(np.float32); y = idx['labels']; "
            f"tr = np.flatnonzero(s == 'train'); te = np.flatnonzero(s == 'test'); ")


def _sklearn_code(shape: Shape, root: str, csv: Path) -> str:
    """The reference the issue names: LogisticRegression at one C on the standardised
    float32 training matrix (sklearn's own lbfgs), the whole set in memory."""
    head = _load_code(root, str(csv))
    if shape.task == "multilabel":
        fit = ("from sklearn.multiclass import OneVsRestClassifier as O; "
               "m = O(LR(C=1.0, max_iter=500)).fit(Xs[tr], y[tr])")
    else:
        fit = "m = LR(C=1.0, max_iter=500).fit(Xs[tr], y[tr, 0])"
    return head + ("from sklearn.preprocessing import StandardScaler; "
                   "from sklearn.linear_model import LogisticRegression as LR; "
                   "Xs = StandardScaler().fit(X[tr]).transform(X); del X; " + fit)


def _numpy_knn_code(shape: Shape, root: str, csv: Path) -> str:
    """A plain numpy blocked top-k over the same normalised rows (val + test queries, k =
    the probe's largest), and the GFLOP/s of it and of one plain matmul block."""
    head = _load_code(root, str(csv))
    return head + (
        "import time; from featstore.choices import DEFAULT_KS; k = max(DEFAULT_KS); "
        "T = X[tr]; T /= np.linalg.norm(T, axis=1, keepdims=True); "
        "Q = X[s != 'train']; Q /= np.linalg.norm(Q, axis=1, keepdims=True); del X; "
        "t0 = time.perf_counter(); A = Q[:1024] @ T.T; tm = time.perf_counter() - t0; "
        "t0 = time.perf_counter(); \n"
        "for q in range(0, len(Q), 1024):\n"
        "    S = Q[q:q + 1024] @ T.T\n"
        "    i = np.argpartition(-S, k, axis=1)[:, :k]\n"
        "t = time.perf_counter() - t0\n"
        "print(f'GFLOPS {2 * len(Q) * len(T) * T.shape[1] / t / 1e9:.1f} '"
        "f'{2 * 1024 * len(T) * T.shape[1] / tm / 1e9:.1f}')")


def knn_rate(shape: Shape, store: FeatureStore, csv: Path) -> str:
    """featstore's kNN GFLOP/s (its top_k over the same shapes) beside a plain matmul of one
    block, both in this process, one after the other."""
    code = (_load_code(str(store.root), str(csv)) + (
        "import time, torch; from featstore.probe.knn import top_k, normalise_, "
        "TRAIN_BLOCK_ROWS as B, CHUNK_ROWS as QB; from featstore.choices import DEFAULT_KS; "
        "T = normalise_(torch.from_numpy(X[tr])); Q = normalise_(torch.from_numpy("
        "X[s != 'train'][:4096])); del X; Qb = Q[:QB]; Tb = T[:B]; "
        "t0 = time.perf_counter(); [Qb @ Tb.T for _ in range(8)]; "
        "tm = (time.perf_counter() - t0) / 8; "
        "t0 = time.perf_counter(); top_k(Q, T, max(DEFAULT_KS)); t = time.perf_counter() - t0; "
        "f = 2 * len(Q) * len(T) * T.shape[1]; "
        "print(f'{f / t / 1e9:.1f} {2 * QB * B * T.shape[1] / tm / 1e9:.1f}')"))
    _, _, out = measure(py(code))
    ours, mm = (float(v) for v in out.split())
    return f"featstore top-k {ours:.0f} GFLOP/s = {ours / mm:.0%} of a plain matmul ({mm:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--datasets", default="pcam")
    ap.add_argument("--stages",
                    default="read,linear,seeds,knn,fuse,fuse-small,results,report")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-alternatives", action="store_true")
    args = ap.parse_args()
    stages = args.stages.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="study_scale-"))
    rows = []
    try:
        for name in args.datasets.split(","):
            shape = SHAPES[name]
            t0 = time.perf_counter()
            csv, store = make_dataset(work, shape, args.scale)
            print(f"# {name}: store ready in {time.perf_counter() - t0:.0f} s ({work})",
                  file=sys.stderr)
            for stage, what, cmd, alt_name, alt in stages_for(shape, csv, store, work, stages):
                wall, peak, _ = measure(cmd)
                row = {"dataset": name, "stage": stage, "featstore": what, "wall_s": wall,
                       "peak_gib": peak}
                if alt and not args.no_alternatives:
                    awall, apeak, aout = measure(alt)
                    row.update(alternative=alt_name, alt_wall_s=awall, alt_peak_gib=apeak,
                               ratio=wall / awall)
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
            if "knn" in stages:
                print(f"# {name} kNN: {knn_rate(shape, store, csv)}")
    finally:
        if args.work is None and not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print("\n| dataset | stage | featstore | wall s | peak GiB | alternative | wall s | "
          "peak GiB | wall ratio |\n|---|---|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        alt = (f"{r['alternative']} | {r['alt_wall_s']:.1f} | {r['alt_peak_gib']:.2f} | "
               f"{r['ratio']:.2f}x" if "alternative" in r else "| | |")
        print(f"| {r['dataset']} | {r['stage']} | {r['featstore']} | {r['wall_s']:.1f} | "
              f"{r['peak_gib']:.2f} | {alt} |")


if __name__ == "__main__":
    main()
