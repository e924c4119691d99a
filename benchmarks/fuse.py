"""DVME fusion on this CPU: training time and test metric against the concat baseline, the
wall time of a full fractions x seeds DVME grid, and the attention variants against the plain
mean before and after the attention fix (module docstring of featstore/fusion/dvme.py).

    python benchmarks/fuse.py [--sections speed,run,pneumonia,generated] [--rows 50000]
        [--seeds 5] [--fusion-seeds 3] [--data FILE.npz] [--store DIR] [--fractions 1,0.1]

speed: three generated embedding sets of dims 2048, 2048 and 384 (two ResNet-50s and a
ViT-S/16), each carrying part of a 5-class signal; split 80/10/10.
run: one fusion run as ``featstore fuse`` makes it (DVME softmax with the concat and single
baselines, then all three attentions with them) on the speed section's data: seconds and the
number of linear-probe sweeps fitted (run it on two commits to compare).
pneumonia: the balanced PneumoniaMNIST file of ../shared/data (or --data), embedded by three
random-weight backbones at 64 px (into a temporary store, or --store to reuse one); test AUC
of each DVME attention, of the linear probe on the concatenation and of the best single
backbone, mean +- sd over seeds, for DVME head version 2 (before issue 21) and now.
generated: the same comparison on generated embeddings: every backbone carries the same
signal; one backbone is pure noise; each backbone is informative for different classes; one
informative backbone beside two loud noise ones (issue 21's known answer).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from featstore.choices import HEAD_VERSION
from featstore.fusion import ATTENTIONS, DVME, fuse_embeddings
from featstore.store.layout import Embeddings

DIMS = (2048, 2048, 384)
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)
PNEUMONIA = (Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
             / "pneumoniamnist_balanced.npz")
RANDOM_BACKBONES = ("timm:resnet18@random", "timm:test_vit@random",
                    "timm:mobilenetv3_small_100@random")
IMAGE_SIZE = 64
VERSIONS = (2, HEAD_VERSION)  # the DVME heads compared: before issue 21 and now


def generated(rows: int, classes: int = 5, seed: int = 0) -> list[Embeddings]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    centres = rng.normal(0, 1, (len(DIMS), classes, 16))
    split = np.array(["train"] * rows, dtype=object)
    perm = rng.permutation(rows)
    split[perm[: rows // 10]] = "val"
    split[perm[rows // 10: rows // 5]] = "test"
    ids = np.array([f"r{i:06d}" for i in range(rows)])
    embs = []
    for k, dim in enumerate(DIMS):
        latent = centres[k][y] * (0.3 + 0.2 * k) + rng.normal(0, 1, (rows, 16))
        X = np.maximum(latent @ rng.normal(0, 1, (16, dim)) / 4
                       + rng.normal(0, 1, (rows, dim)), 0)
        embs.append(Embeddings(X=X.astype(np.float32), ids=ids, split=split,
                               labels=y[:, None], group=np.full(rows, ""), alias=f"b{k}-{dim}",
                               key=f"k{k}" * 8, dataset="generated", attrs={}))
    return embs


def speed(args: argparse.Namespace) -> None:
    embs = generated(args.rows)
    results: dict[str, list[tuple[float, float]]] = {"dvme-softmax": [], "concat": []}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        recs = fuse_embeddings(embs, task="multiclass", seed=seed, n_bootstrap=0,
                               baselines=False)
        t_dvme = time.perf_counter() - t0
        results["dvme-softmax"].append((t_dvme, next(r.value for r in recs if r.primary)))
        t0 = time.perf_counter()
        recs = fuse_embeddings(embs, task="multiclass", seed=seed, n_bootstrap=0,
                               attentions=(), baselines=True)
        t_concat = time.perf_counter() - t0  # concat + the three single probes
        results["concat"].append((t_concat, next(r.value for r in recs
                                                 if r.primary and r.method == "concat")))
        singles = {r.method: r.value for r in recs if r.primary and r.method != "concat"}
    print(f"\nfusion, {args.rows} rows x dims {DIMS}, 5 classes, fraction 1.0, "
          f"{args.seeds} seeds (accuracy on test)")
    print(f"{'method':<38}{'s per seed':>11}{'accuracy':>20}")
    for name, label in (("dvme-softmax", "DVME (softmax attention)"),
                        ("concat", "concat + 3 single probes (linear)")):
        t = np.array([r[0] for r in results[name]])
        v = np.array([r[1] for r in results[name]])
        print(f"{label:<38}{t.mean():>11.1f}{v.mean():>12.4f} +- {v.std(ddof=1):.4f}")
    for name, v in singles.items():
        print(f"{'  ' + name + ' (linear probe)':<38}{'':>11}{v:>12.4f}  (seed {args.seeds - 1})")
    t0 = time.perf_counter()
    for fraction in FRACTIONS:
        for seed in range(args.seeds):
            fuse_embeddings(embs, task="multiclass", fraction=fraction, seed=seed,
                            n_bootstrap=0, baselines=False)
    grid = time.perf_counter() - t0
    print(f"full DVME grid, fractions {FRACTIONS} x {args.seeds} seeds: {grid:.0f} s "
          f"(target: under 300 s on a 2-core CPU)")


def one_run(args: argparse.Namespace) -> None:
    import featstore.probe.linear as linear

    embs = generated(args.rows)
    fits = []
    fit = linear.fit_with_validation

    def counted(X, *a, **k):
        fits.append(X.shape[1])
        return fit(X, *a, **k)

    linear.fit_with_validation = counted
    print(f"\none fusion run, {args.rows} rows x dims {DIMS}, 5 classes, fraction 1.0, "
          f"{args.seeds} seeds")
    print(f"{'methods':<44}{'s per run':>10}{'probe sweeps (dims)':>34}")
    try:
        for attentions in (("softmax",), ATTENTIONS):
            times = []
            for seed in range(args.seeds):
                fits.clear()
                t0 = time.perf_counter()
                fuse_embeddings(embs, task="multiclass", seed=seed, n_bootstrap=0,
                                attentions=attentions, baselines=True)
                times.append(time.perf_counter() - t0)
            label = f"DVME {'+'.join(attentions)}, concat, singles"
            print(f"{label:<44}{np.median(times):>10.1f}{len(fits):>6} "
                  f"{str(sorted(fits, reverse=True)):>28}")
    finally:
        linear.fit_with_validation = fit


@contextlib.contextmanager
def head_version(version: int) -> Iterator[None]:
    """DVME heads fitted inside are built as head ``version`` (1: before the attention fix).
    For this benchmark only: the library always fits the current version."""
    saved = DVME._head_version
    DVME._head_version = version
    try:
        yield
    finally:
        DVME._head_version = saved


def wrap(parts: Sequence[tuple[str, np.ndarray]], y: np.ndarray, name: str) -> list[Embeddings]:
    """Generated embedding sets, split 60/20/20 in row order."""
    n = len(y)
    split = np.array(["train"] * n, dtype=object)
    split[int(0.6 * n):int(0.8 * n)] = "val"
    split[int(0.8 * n):] = "test"
    ids = np.array([f"r{i:05d}" for i in range(n)])
    return [Embeddings(X=X.astype(np.float32), ids=ids, split=split, labels=y[:, None],
                       group=np.full(n, ""), alias=alias, key=alias * 8, dataset=name,
                       attrs={}) for alias, X in parts]


def same_signal(seed: int, n: int = 3000) -> tuple[list[Embeddings], str]:
    """Three backbones, each a noisy view of one binary signal."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    parts = []
    for alias, dim in (("A", 48), ("B", 32), ("C", 40)):
        X = rng.normal(size=(n, dim))
        X[:, :4] += 0.7 * s[:, None]
        parts.append((alias, X))
    return wrap(parts, (s > 0).astype(int), "same-signal"), "binary"


def noise_backbone(seed: int, n: int = 3000) -> tuple[list[Embeddings], str]:
    """A and B each see half of a binary signal; C is pure noise."""
    rng = np.random.default_rng(seed)
    s1, s2 = rng.normal(size=n), rng.normal(size=n)
    parts = []
    for alias, signal, dim in (("A", s1, 48), ("B", s2, 32), ("C", None, 40)):
        X = rng.normal(size=(n, dim))
        if signal is not None:
            X[:, :4] += 1.5 * signal[:, None]
        parts.append((alias, X))
    return wrap(parts, (s1 + s2 > 0).astype(int), "noise-backbone"), "binary"


def per_class(seed: int, n: int = 3000) -> tuple[list[Embeddings], str]:
    """Four classes: A separates classes 0 and 1 and is loud noise on 2 and 3, B the reverse
    (a linear head cannot gate the loud rows out; attention can)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    parts = []
    for k, (alias, dim) in enumerate((("A", 48), ("B", 32))):
        mine = y // 2 == k
        X = rng.normal(size=(n, dim))
        X[mine] += 0.5 * rng.normal(size=(4, dim))[y[mine]]
        X[~mine] *= 3
        parts.append((alias, X))
    return wrap(parts, y, "per-class"), "multiclass"


def one_informative(seed: int, n: int = 1500) -> tuple[list[Embeddings], str]:
    """The known answer of issue 21: A (32-d) carries the binary signal; B (128-d) and C
    (96-d) are noise of 5x A's scale. Attention belongs on A, and DVME should score at
    least what A scores alone."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    parts = []
    for alias, dim, scale in (("A", 32, 1.0), ("B", 128, 5.0), ("C", 96, 5.0)):
        X = rng.normal(size=(n, dim)) * scale
        if alias == "A":
            X[:, :6] += 1.2 * s[:, None]
        parts.append((alias, X))
    return wrap(parts, (s > 0).astype(int), "one-informative"), "binary"


def auc_table(title: str, runs: Callable[[int], tuple[list[Embeddings], str]], seeds: int,
              fraction: float = 1.0) -> None:
    """Test AUC (macro one-vs-rest for multiclass) of each method, head v1 and v2."""
    vals: dict[tuple[str, int], list[float]] = {}
    attention: dict[tuple, list[list[float]]] = {}  # (method, version[, class])
    for seed in range(seeds):
        embs, task = runs(seed)
        for version in VERSIONS:
            with head_version(version):
                recs = fuse_embeddings(embs, task=task, fraction=fraction, seed=seed,
                                       attentions=ATTENTIONS, n_bootstrap=0,
                                       baselines=version == VERSIONS[1])
            for r in recs:
                if r.metric == "auc":
                    vals.setdefault((r.method, version), []).append(r.value)
                    if r.method.startswith("dvme-"):
                        attention.setdefault((r.method, version), []).append(
                            list(r.attention.values()))
                        for c, att in r.attention_per_class.items():
                            attention.setdefault((r.method, version, c), []).append(
                                list(att.values()))
    aliases = [e.alias.split(":")[-1].split("/")[0] for e in embs]
    singles = {m: np.mean(v) for (m, _), v in vals.items() if m.startswith("single:")}
    best = max(singles, key=singles.get)  # on test, as issue 12 reports it

    def cell(method: str, version: int) -> str:
        v = np.array(vals[(method, version)])
        return f"{v.mean():.4f} +- {v.std(ddof=1) if len(v) > 1 else 0:.4f}"

    print(f"\n{title}: test AUC, mean +- sd over {seeds} seeds, fraction {fraction:g}")
    old, new = VERSIONS
    print(f"{'method':<34}{f'before (head v{old})':>20}{f'after (head v{new})':>20}")
    for att in ATTENTIONS:
        print(f"{'DVME ' + att:<34}{cell('dvme-' + att, old):>20}"
              f"{cell('dvme-' + att, new):>20}")
    print(f"{'concat (linear probe)':<34}{'':>20}{cell('concat', new):>20}")
    print(f"{'best single (linear probe)':<34}{'':>20}{cell(best, new):>20}  "
          f"{best[len('single:'):]}")
    for m in sorted(singles):
        print(f"{'  ' + m:<34}{'':>20}{cell(m, new):>20}")
    classes = sorted({k[2] for k in attention if len(k) == 3}, key=int)
    for att in ("softmax", "sigmoid"):
        mean = {v: np.mean(attention[("dvme-" + att, v)], axis=0) for v in VERSIONS}
        print(f"  mean {att} attention on test ({', '.join(aliases)}): before "
              f"{np.round(mean[old], 2).tolist()}, after {np.round(mean[new], 2).tolist()}")
        if len(classes) > 2:  # where backbones are informative for different classes
            per = {c: np.round(np.mean(attention[("dvme-" + att, new, c)], axis=0),
                               2).tolist()
                   for c in classes}
            print(f"    after, by class: {per}")


def pneumonia(args: argparse.Namespace) -> None:
    from featstore import FeatureStore, extract_embeddings, load_dataset, parse_backbone

    if not args.data.exists():
        print(f"\npneumonia: skipped, no {args.data} (pass --data)")
        return
    manifest = load_dataset(args.data)
    with contextlib.ExitStack() as stack:
        root = args.store or stack.enter_context(tempfile.TemporaryDirectory())
        fs = FeatureStore(root)
        t0 = time.perf_counter()
        results = extract_embeddings(manifest, [parse_backbone(b, input_size=IMAGE_SIZE)
                                                for b in RANDOM_BACKBONES], fs)
        print(f"\n{args.data.stem}: {args.data.name}, {len(manifest.ids)} images, "
              f"{', '.join(RANDOM_BACKBONES)} at {IMAGE_SIZE} px embedded in "
              f"{time.perf_counter() - t0:.0f} s (store {root})")
        group = fs.dataset(manifest)
        embs = [group.embedding_set(r.key).load() for r in results]
        for fraction in args.fractions:
            auc_table(f"{args.data.stem}, three random-weight backbones", lambda _seed: (
                embs, manifest.task), args.fusion_seeds, fraction)


def generated_cases(args: argparse.Namespace) -> None:
    for title, runs in (("every backbone carries the same signal", same_signal),
                        ("one backbone is pure noise (C)", noise_backbone),
                        ("backbones informative for different classes", per_class),
                        ("one informative backbone (A), two loud noise ones",
                         one_informative)):
        auc_table(f"generated, {title}", runs, args.fusion_seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="speed,pneumonia,generated")
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fusion-seeds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=PNEUMONIA)
    ap.add_argument("--store", default=None)
    ap.add_argument("--fractions", type=lambda t: [float(f) for f in t.split(",")],
                    default=[1.0, 0.1])
    args = ap.parse_args()
    sections = {"speed": speed, "run": one_run, "pneumonia": pneumonia,
                "generated": generated_cases}
    for name in args.sections.split(","):
        sections[name](args)


if __name__ == "__main__":
    main()
