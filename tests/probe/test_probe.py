"""Linear probes: metric parity with scikit-learn, learning a known rule, each task type."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from featstore.errors import ProbeError
from featstore.probe import LinearProbe, fit_with_validation, task_metrics


def linear_data(n=600, d=20, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 5, d) + rng.normal(size=d) * 3
    W = rng.normal(size=(d, classes))
    y = (X @ W / np.linalg.norm(W, axis=0) + rng.normal(0, 0.3, (n, classes))).argmax(1)
    return X.astype(np.float32), y


def test_probe_recovers_a_known_linear_rule():
    X, y = linear_data()
    sweep = fit_with_validation(X[:400], y[:400], X[400:500], y[400:500], task="binary")
    auc = roc_auc_score(y[500:], sweep.probe.predict_proba(X[500:])[:, 1])
    assert auc > 0.97
    assert sweep.probe.converged_ and sweep.l2 in sweep.val_scores


def test_probe_matches_sklearn_logistic_regression():
    X, y = linear_data(classes=3)
    l2 = 1e-2
    ours = LinearProbe("multiclass", l2=l2, tol=1e-7).fit(X, y)
    Xs = (X - ours.mean_) / ours.scale_
    sk = LogisticRegression(C=1 / (l2 * len(X)), max_iter=5000, tol=1e-10).fit(Xs, y)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(Xs), atol=2e-3)


def test_ordinal_task_scores_quadratic_kappa():
    X, y = linear_data(classes=5, n=800)
    probe = LinearProbe("ordinal", l2=1e-3).fit(X[:600], y[:600])
    pred = probe.predict(X[600:])
    assert probe.score(X[600:], y[600:]) == pytest.approx(
        cohen_kappa_score(y[600:], pred, weights="quadratic"))
    assert probe.score(X[600:], y[600:]) > 0.5


def test_multilabel_with_a_label_absent_from_test():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    Y = np.stack([(X[:, 0] > 0), (X[:, 1] > 0.5), (X[:, 2] > 0)], 1).astype(int)
    probe = LinearProbe("multilabel", l2=1e-3).fit(X[:200], Y[:200])
    Yt = Y[200:].copy()
    Yt[:, 2] = 0  # the third finding never occurs in test
    m = task_metrics("multilabel", Yt, probe.predict_proba(X[200:]))
    assert np.isnan(m["auc[2]"]) and m["auc[0]"] > 0.95
    assert m["mean_auc"] == pytest.approx((m["auc[0]"] + m["auc[1]"]) / 2)


def test_metrics_equal_sklearn_on_the_same_predictions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    m = task_metrics("multiclass", y, p)
    assert m["auc"] == roc_auc_score(y, p, multi_class="ovr", average="macro")
    b = task_metrics("binary", y % 2, np.stack([1 - p[:, 0], p[:, 0]], 1))
    assert b["auc"] == roc_auc_score(y % 2, p[:, 0])


def test_bad_probe_input_is_refused():
    X, y = linear_data()
    with pytest.raises(ProbeError, match="one class only"):
        LinearProbe().fit(X, np.zeros_like(y))
    X[5, 3] = np.nan
    with pytest.raises(ProbeError, match="NaN or inf .*row 5"):
        LinearProbe().fit(X, y)


def test_sweep_solves_each_l2_as_if_alone():
    from featstore.probe import LinearProbe

    X, y = linear_data(classes=4, n=500)
    grid = (1e-1, 1e-3)
    sweep = fit_with_validation(X[:400], y[:400], X[400:], y[400:], task="multiclass",
                                l2_grid=grid)
    chosen = sweep.probe
    alone = LinearProbe("multiclass", l2=sweep.l2).fit(X[:400], y[:400])
    np.testing.assert_allclose(chosen.predict_proba(X[400:]), alone.predict_proba(X[400:]),
                               atol=2e-3)
    assert all(sweep.converged.values()) and set(sweep.n_iter) == set(grid)


def test_multilabel_probe_is_one_sklearn_regression_per_label():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    Y = np.stack([(X[:, 0] + rng.normal(0, 1, 400) > 0), (X[:, 1] > 0.3)], 1).astype(int)
    l2 = 1e-2
    ours = LinearProbe("multilabel", l2=l2, tol=1e-6).fit(X, Y)
    Xs = (X - ours.mean_) / ours.scale_
    for k in range(2):
        sk = LogisticRegression(C=1 / (l2 * len(X)), tol=1e-10, max_iter=5000).fit(Xs, Y[:, k])
        np.testing.assert_allclose(ours.predict_proba(X)[:, k], sk.predict_proba(Xs)[:, 1],
                                   atol=2e-3)


def test_knn_probe_votes_like_dino():
    from featstore.probe import KNNProbe, knn_with_validation

    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    y = np.array([0, 0, 1, 1])
    q = np.array([[1, 0.2]], np.float32)
    probe = KNNProbe("binary", k=3, temperature=0.1).fit(train, y)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sims = (unit(q) @ unit(train).T)[0]
    top = np.argsort(-sims)[:3]
    w = np.exp(sims[top] / 0.1)
    expected = np.array([w[y[top] == 0].sum(), w[y[top] == 1].sum()]) / w.sum()
    np.testing.assert_allclose(probe.predict_proba(q)[0], expected, rtol=1e-5)
    X, labels = linear_data(n=800, classes=3)
    sweep = knn_with_validation(X[:600], labels[:600], X[600:700], labels[600:700],
                                task="multiclass", ks=(5, 25))
    assert sweep.k in (5, 25) and sweep.probe.score(X[700:], labels[700:]) > 0.6


def test_bootstrap_ci_brackets_the_estimate_and_narrows_with_data():
    from featstore.probe import bootstrap_ci

    rng = np.random.default_rng(0)

    def data(n):
        y = rng.integers(0, 2, n)
        p1 = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.25, n), 0, 1)
        return y, np.stack([1 - p1, p1], 1)

    y, p = data(200)
    lo, hi = bootstrap_ci("binary", y, p, n_boot=300)
    assert lo < roc_auc_score(y, p[:, 1]) < hi
    y2, p2 = data(5000)
    lo2, hi2 = bootstrap_ci("binary", y2, p2, n_boot=300)
    assert hi2 - lo2 < (hi - lo) / 2


def test_expected_grade_thresholds_fit_kappa_on_val():
    from featstore.probe.ordinal import decode, expected_grade, fit_thresholds

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 600)
    # a probe whose expected grade is biased low: midpoints underestimate every grade
    e = np.clip(y * 0.7 + rng.normal(0, 0.3, 600), 0, 4)
    t = fit_thresholds(e, y, 5)
    assert np.all(np.diff(t) > 0)
    base = cohen_kappa_score(y, decode(e, np.arange(4) + 0.5), weights="quadratic")
    assert cohen_kappa_score(y, decode(e, t), weights="quadratic") > base + 0.02
    assert expected_grade(np.eye(5)[[0, 4]]).tolist() == [0.0, 4.0]


def test_val_choice_breaks_near_ties_towards_stronger_regularisation():
    from featstore.probe.linear import choose_on_val

    assert choose_on_val([0.70, 0.7769, 0.7775, 0.75]) == 1  # within 1e-3 of the best
    assert choose_on_val([0.70, 0.77, 0.80]) == 2
    assert choose_on_val([float("nan"), 0.6, 0.5]) == 1
    assert choose_on_val([float("nan"), float("nan")]) == 0


def test_carved_val_never_splits_a_patient():
    """A dataset without val: val is carved from train by whole patients, stratified."""
    from featstore.probe.run import split_rows
    from featstore.store.layout import Embeddings

    rng = np.random.default_rng(0)
    n = 300
    group = np.array([f"p{i // 3:03d}" for i in range(n)])  # three images per patient
    y = np.array([int(g[1:]) % 2 for g in group])
    split = np.where(np.arange(n) < 240, "train", "test").astype(object)
    emb = Embeddings(X=rng.normal(size=(n, 4)).astype(np.float32), ids=np.arange(n).astype(str),
                     split=split, labels=y[:, None], group=group, alias="a", key="k" * 8,
                     dataset="d", attrs={})
    tr, va, te, source = split_rows(emb, y, "binary")
    assert "patients" in source
    assert not set(group[tr]) & set(group[va]) and not set(group[va]) & set(group[te])
    assert 0.15 < len(va) / 240 < 0.25 and set(y[va]) == {0, 1}
    again = split_rows(emb, y, "binary")
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again[:3], strict=True))


def test_probe_grid_persists_every_run_and_reads_it_back(tmp_path, npz_file):
    from featstore import FeatureStore, extract_embeddings, load_dataset, parse_backbone
    from featstore.probe import ProbeConfig, probe_grid, stored_records
    from tests.conftest import SIZE, TINY

    m = load_dataset(npz_file)
    fs = FeatureStore(tmp_path / "store")
    [res] = extract_embeddings(m, [parse_backbone(TINY, input_size=SIZE)], fs)
    sets = [fs.dataset(m).embedding_set(res.key)]
    cfg = ProbeConfig(task=m.task, n_bootstrap=20)
    seen = []
    first = probe_grid(sets, cfg, probes=["linear", "knn"], fractions=[0.5, 1.0], seeds=2,
                       on_run=seen.append)
    assert len(seen) == 2 * 2 * 2 and not any(r.cached for r in first)
    assert {(r.probe, r.fraction, r.seed) for r in first} == {
        (p, f, s) for p in ("linear", "knn") for f in (0.5, 1.0) for s in (0, 1)}
    again = probe_grid(sets, cfg, probes=["linear", "knn"], fractions=[0.5, 1.0], seeds=2)
    assert all(r.cached for r in again)
    assert [r.value for r in again] == [r.value for r in first]
    assert len(stored_records(sets)) == len(first)
    with pytest.raises(ProbeError, match=r"fractions = 0.0: expected values in \(0, 1\]"):
        probe_grid(sets, cfg, fractions=[0.0])
    with pytest.raises(ProbeError, match="probes = 'svm': expected one of linear, knn"):
        probe_grid(sets, cfg, probes=["svm"])


def test_knn_never_reports_more_neighbours_than_training_rows():
    from featstore.probe.knn import knn_with_validation

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8))
    y = (X[:, 0] > 0).astype(int)
    sweep = knn_with_validation(X[:30], y[:30], X[30:], y[30:], task="binary",
                                ks=(10, 20, 50, 100, 200))
    assert sweep.k <= 30 and max(sweep.val_scores) == 30  # 50, 100, 200 are all 30 rows


def embedding_like(n, d, seed=0, classes=2):
    """Correlated ReLU features from a 16-dim latent that carries the class (a pooled CNN
    embedding's shape): wide and low-rank, as a small labelled fraction of one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    latent = rng.normal(0, 1, (n, 16)) + 0.5 * rng.normal(0, 1, (classes, 16))[y]
    X = np.maximum(latent @ rng.normal(0, 1, (16, d)) + rng.normal(0, 0.3, (n, d)), 0)
    return X.astype(np.float32), y


@pytest.mark.parametrize("task,classes", [("binary", 2), ("multiclass", 3)])
def test_fewer_rows_than_dims_puts_no_weight_where_the_rows_say_nothing(task, classes):
    """55 rows x 512 dims, the study's small-fraction regime: the minimiser lies in the span
    of the training rows (outside it the penalty only grows). The earlier solver put up to 84%
    of a weak-L2 probe's weight norm outside it (rounding noise, amplified by 1/sqrt(l2)),
    which moved its val and test predictions at random."""
    import torch

    from featstore.probe.linear import _prepare, _solve

    X, y = embedding_like(55, 512, classes=classes)
    grid = [1e4, 1.0, 1e-2, 1e-4, 1e-6]
    prob = _prepare(task, X, y, "cpu")
    sol = _solve(prob, grid, 500, 1e-4)
    assert bool(sol.converged.all())
    _, s, Vh = torch.linalg.svd(prob.Xs.double(), full_matrices=False)
    rows = Vh[s > 1e-6 * s[0]]
    W = sol.W.double()  # (P, D, C)
    outside = W - torch.einsum("kd,ke,pec->pdc", rows, rows, W)
    share = outside.flatten(1).norm(dim=1) / W.flatten(1).norm(dim=1)
    assert share.max() < 1e-5, share


def test_fewer_rows_than_dims_solves_sklearns_problem():
    """120 rows x 700 dims (solved in the rows' span): in float64 the solution is sklearn's
    LogisticRegression's, on held-out rows too (which see every direction of W)."""
    import torch

    from featstore.probe import _lbfgs

    X, y = embedding_like(400, 700, seed=1, classes=3)
    Xs = ((X - X[:120].mean(0)) / X[:120].std(0)).astype(np.float64)
    Xt = torch.as_tensor(Xs, dtype=torch.float64)
    grid = (1.0, 0.1, 1e-3)
    sol = _lbfgs.solve(Xt[:120], torch.as_tensor(y[:120]), "softmax", 3,
                       torch.tensor(grid, dtype=torch.float64), max_iter=3000, tol=1e-9)
    assert bool(sol.converged.all()), sol.n_iter
    for i, l2 in enumerate(grid):
        sk = LogisticRegression(C=1 / (l2 * 120), max_iter=5000, tol=1e-10).fit(Xs[:120],
                                                                                 y[:120])
        ours = torch.softmax(Xt[120:] @ sol.W[i] + sol.b[i], 1).numpy()
        np.testing.assert_allclose(ours, sk.predict_proba(Xs[120:]), atol=1e-4)


@pytest.mark.parametrize("seed,decay", [(0, 2.0), (3, 2.0), (11, 1.0), (11, 2.0)])
def test_strong_l2_converges_in_a_few_iterations(seed, decay):
    """l2 = 1e4 on features with one dominant direction (random convnext embeddings look like
    this): near the optimum the loss moves by less than float32 resolves, and the earlier line
    search wandered there without converging (34, 59, 500 and 17 iterations on these four, 500
    on BreastMNIST's convnext probe); with the logits carried in float64 it takes a few."""
    from featstore.probe.linear import _prepare, _solve

    rng = np.random.default_rng(seed)
    n, d = 546, 320
    y = (rng.random(n) < 0.5).astype(int)
    spectrum = np.sqrt(np.arange(1, d + 1) ** -decay)
    basis = np.linalg.qr(rng.normal(0, 1, (d, d)))[0]
    X = (rng.normal(0, 1, (n, d)) * spectrum) @ basis + 0.2 * y[:, None] * rng.normal(0, 1, d)
    prob = _prepare("binary", X.astype(np.float32), y, "cpu")
    sol = _solve(prob, [1e4], 500, 1e-4)
    assert bool(sol.converged[0]) and int(sol.n_iter[0]) <= 12, sol.n_iter


def test_every_seed_at_fraction_1_shares_one_fit_and_keeps_its_own_bootstrap(tmp_path,
                                                                             npz_file,
                                                                             monkeypatch):
    """At fraction 1 every seed trains on the same rows: the grid fits the probe once and
    scores it per seed (the seed draws the bootstrap); each record is the one a run of that
    seed alone gives. Fractions below 1 draw other rows per seed: one fit each."""
    import featstore.probe.linear as linear
    from featstore import FeatureStore, extract_embeddings, load_dataset, parse_backbone
    from featstore.probe import ProbeConfig, probe_grid
    from featstore.probe.run import probe_embeddings
    from tests.conftest import SIZE, TINY

    m = load_dataset(npz_file)
    fs = FeatureStore(tmp_path / "store")
    [res] = extract_embeddings(m, [parse_backbone(TINY, input_size=SIZE)], fs)
    sets = [fs.dataset(m).embedding_set(res.key)]
    cfg = ProbeConfig(task=m.task, n_bootstrap=50)
    real, fitted = linear.fit_with_validation, []
    monkeypatch.setattr(linear, "fit_with_validation",
                        lambda *a, **k: fitted.append(1) or real(*a, **k))
    records = probe_grid(sets, cfg, fractions=[0.5, 1.0], seeds=3)
    assert len(fitted) == 3 + 1
    primary = {(r.fraction, r.seed): r for r in records if r.primary}
    alone = [r for r in probe_embeddings(sets[0].load(), cfg, fraction=1.0, seed=2)
             if r.primary][0]
    assert primary[(1.0, 2)].to_dict() | {"run_id": 0} == alone.to_dict() | {"run_id": 0}
    assert len({primary[(1.0, s)].value for s in range(3)}) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_blocked_top_k_finds_the_neighbours_one_whole_search_finds(dtype):
    # training blocks x query blocks, the running top k merged block by block, the training
    # rows kept as stored (float16 too) and normalised as each block is used: the same
    # neighbours, in the same order, with the same similarities as one search over a
    # normalised float32 copy
    import torch

    from featstore.probe.knn import normalise_, row_norms, top_k

    rng = np.random.default_rng(0)
    T = rng.standard_normal((3000, 48)).astype(dtype)
    Q = normalise_(torch.as_tensor(rng.standard_normal((700, 48)), dtype=torch.float32))
    whole = normalise_(torch.as_tensor(T, dtype=torch.float32).clone())
    want_v, want_i = (Q @ whole.T).topk(25, dim=1)
    got_v, got_i = top_k(Q, torch.as_tensor(T), 25, norms=row_norms(torch.as_tensor(T)),
                         query_rows=128, train_rows=512)
    assert torch.equal(got_i, want_i)
    assert torch.allclose(got_v, want_v, rtol=0, atol=1e-6)
    small_v, small_i = top_k(Q, whole, 25, train_rows=10)  # blocks smaller than k
    assert torch.equal(small_i, want_i)


def test_a_design_too_large_to_hold_is_streamed_to_the_same_probe(monkeypatch):
    # the concatenation of several backbones' float16 rows, never made whole: the solver
    # reads it standardised a block of rows at a time at every pass, and finds the probe a
    # float32 copy of it gives (same L2, same iterations, weights equal to rounding)
    from featstore.probe import _lbfgs, linear
    from featstore.rows import ColumnBlocks

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    parts = [(rng.standard_normal((3000, d)) + 2.0).astype(np.float16) for d in (40, 24)]
    parts[0][:, :3] += y[:, None].astype(np.float16)
    tr, va = slice(0, 2400), slice(2400, None)

    def fit():
        return linear.fit_with_validation(ColumnBlocks([p[tr] for p in parts]), y[tr],
                                          ColumnBlocks([p[va] for p in parts]), y[va],
                                          task="binary")

    held = fit()
    monkeypatch.setattr(linear, "DENSE_BYTES", 0)
    monkeypatch.setattr(_lbfgs, "STREAM_ROWS", 512)  # several blocks a pass
    streamed = fit()
    assert streamed.l2 == held.l2 and streamed.n_iter == held.n_iter
    np.testing.assert_allclose(streamed.probe.coef_, held.probe.coef_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(streamed.probe.mean_, held.probe.mean_, rtol=1e-6)
    cat = np.concatenate([p[va] for p in parts], 1).astype(np.float32)
    np.testing.assert_allclose(streamed.probe.predict_proba(cat),
                               held.probe.predict_proba(cat), rtol=0, atol=1e-5)


@pytest.mark.parametrize("probe", ["linear", "knn"])
def test_flat_val_auc_does_not_collapse_accuracy(probe):
    """Val AUC is the same for every L2 (one informative feature): the strongest L2 wins
    the tie, and its near-constant outputs sit above 0.5 for every row (train 85% positive),
    so 0.5 would predict one class on a balanced test set. The labels are decided at the
    threshold val chooses instead, and the run's id and record say so."""
    from featstore.choices import THRESHOLD_RULE
    from featstore.probe.run import probe_embeddings
    from featstore.store.layout import Embeddings

    rng = np.random.default_rng(0)
    parts = []
    for n, positive, split in ((500, 0.85, "train"), (400, 0.5, "val"), (400, 0.5, "test")):
        y = (rng.random(n) < positive).astype(int)
        parts.append((rng.normal(size=(n, 1)) + 1.5 * y[:, None], y, np.full(n, split, object)))
    X, y, split = (np.concatenate(p) for p in zip(*parts, strict=True))
    n = len(y)
    emb = Embeddings(X=X.astype(np.float32), ids=np.arange(n).astype(str), split=split,
                     labels=y[:, None], group=np.arange(n).astype(str), alias="a",
                     key="k" * 8, dataset="d", attrs={})
    records = {r.metric: r for r in probe_embeddings(emb, probe=probe, n_bootstrap=0)}
    assert records["auc"].value > 0.75
    assert records["accuracy"].value > 0.7 and records["balanced_accuracy"].value > 0.7
    assert "threshold=" in records["accuracy"].hyperparameter
    assert records["accuracy"].config["threshold"] == THRESHOLD_RULE
    if probe == "linear":
        assert records["auc"].l2 == 1e4
        te = split == "test"
        sweep = fit_with_validation(X[split == "train"], y[split == "train"],
                                    X[split == "val"], y[split == "val"], task="binary")
        assert sweep.l2 == 1e4
        at_half = sweep.probe.predict_proba(X[te])[:, 1] >= 0.5
        assert at_half.all()  # what the records would have said: one class, accuracy ~0.5


def _decaying_spectrum(n, d, seed=0):
    """Embedding-like rows: a decaying spectrum, ReLU'd, a class signal in a few directions."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    spectrum = (3.0 / np.arange(1, d + 1) ** 0.7).astype(np.float32)
    Z = rng.normal(size=(n, d)).astype(np.float32) * spectrum
    Z[:, 5:40] += 0.3 * y[:, None] * spectrum[5:40]
    basis = rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d)
    return np.maximum(Z @ basis + 0.3, 0).astype(np.float16), y


@pytest.mark.parametrize("per_dim", [1, None])
def test_covariance_sample_of_a_wide_design_keeps_weak_l2_converging(monkeypatch, per_dim):
    """The preconditioner's covariance comes from a row sample; a sample of about as many
    rows as dimensions reads many directions as flat, and weak L2 values then crawl (here
    >100 iterations, the concat of PCam's five sets did not converge in 500). The sample is
    at least ``SAMPLE_ROWS_PER_DIM`` rows a dimension: every L2 converges in a few dozen."""
    import featstore.probe._lbfgs as lbfgs
    from featstore.rows import ColumnBlocks

    X, y = _decaying_spectrum(14000, 512)
    monkeypatch.setattr(lbfgs, "PRECONDITION_ROWS", 560)  # ~1.1 rows a dimension
    if per_dim is not None:
        monkeypatch.setattr(lbfgs, "SAMPLE_ROWS_PER_DIM", per_dim)
    sweep = fit_with_validation(ColumnBlocks([X[:12000]]), y[:12000], X[12000:], y[12000:],
                                task="binary")
    iterations = max(sweep.n_iter.values())
    if per_dim is None:
        assert all(sweep.converged.values()) and iterations <= 50, sweep.n_iter
    else:  # the sample the solver had before: what the default protects against
        assert iterations > 100, sweep.n_iter
