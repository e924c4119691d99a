"""DVME fusion: it combines complementary backbones, down-weights noise, attends per class
where that pays and like the plain mean where it cannot, saves and reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featstore.cli import main
from featstore.errors import FusionError
from featstore.fusion import DVME, fuse_embeddings
from featstore.store.layout import Embeddings
from tests.conftest import SIZE, TINY, TINY_VIT


def embedding_sets(parts, y):
    """Generated sets (alias, X) over labels ``y``, split 60/20/20 in row order."""
    n = len(y)
    split = np.array(["train"] * n, dtype=object)
    split[int(0.6 * n):int(0.8 * n)] = "val"
    split[int(0.8 * n):] = "test"
    ids = np.array([f"r{i:05d}" for i in range(n)])
    return [Embeddings(X=X.astype(np.float32), ids=ids, split=split, labels=y[:, None],
                       group=np.full(n, ""), alias=name, key=name * 8, dataset="synthetic",
                       attrs={}) for name, X in parts]


def complementary(n=3000, seed=0, noise_backbone=False):
    """Backbone A sees one half of the signal, B the other; C (optional) sees nothing."""
    rng = np.random.default_rng(seed)
    s1, s2 = rng.normal(size=n), rng.normal(size=n)
    y = (s1 + s2 > 0).astype(int)

    def backbone(signal, dim):
        X = rng.normal(size=(n, dim))
        if signal is not None:
            X[:, :4] += 1.5 * signal[:, None]
        return X

    parts = [("A", backbone(s1, 48)), ("B", backbone(s2, 32))]
    if noise_backbone:
        parts.append(("C", backbone(None, 40)))
    return embedding_sets(parts, y)


def same_signal(n=2000, seed=0):
    """Backbones A, B and C are each a noisy view of one binary signal."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    parts = []
    for name, dim in (("A", 48), ("B", 32), ("C", 40)):
        X = rng.normal(size=(n, dim))
        X[:, :4] += 0.7 * s[:, None]
        parts.append((name, X))
    return embedding_sets(parts, (s > 0).astype(int))


def informative_for_different_classes(n=2000, seed=0):
    """Four classes: A separates 0 from 1 and is loud noise on 2 and 3; B the reverse."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    parts = []
    for k, name in enumerate("AB"):
        mine = y // 2 == k
        X = rng.normal(size=(n, 40))
        X[mine] += 0.5 * rng.normal(size=(4, 40))[y[mine]]
        X[~mine] *= 3
        parts.append((name, X))
    return embedding_sets(parts, y)


def primary(records, method):
    return next(r.value for r in records if r.method == method and r.primary)


def test_dvme_beats_each_single_backbone_on_complementary_signal(tmp_path):
    embs = complementary()
    recs = fuse_embeddings(embs, task="binary", n_bootstrap=0, heads_dir=tmp_path)
    dvme = primary(recs, "dvme-softmax")
    assert dvme > primary(recs, "single:A") + 0.05
    assert dvme > primary(recs, "single:B") + 0.05
    assert dvme > 0.9
    assert {r.method for r in recs} == {"dvme-softmax", "concat", "single:A", "single:B"}


def test_noise_backbone_gets_clearly_less_attention():
    embs = complementary(noise_backbone=True)
    recs = fuse_embeddings(embs, task="binary", n_bootstrap=0, baselines=False)
    att = next(r.attention for r in recs if r.primary)
    # head v2 starts at the plain mean and moves only as far as the data pays: C ends near
    # 0.56x A's and B's weight on seeds 0-4 (the v1 head's 0.2x came with worse AUC)
    assert att["C"] < 0.7 * min(att["A"], att["B"])
    per_class = next(r.attention_per_class for r in recs if r.primary)
    assert set(per_class) == {"0", "1"}


def test_saved_head_reloads_and_predicts_identically(tmp_path):
    embs = complementary(n=1200)
    tr = embs[0].split == "train"
    va = embs[0].split == "val"
    y = embs[0].labels[:, 0]
    head = DVME("binary", dim=32, attention="sigmoid", seed=3, max_epochs=5).fit(
        [e.X[tr] for e in embs], y[tr], [e.X[va] for e in embs], y[va])
    head.save(tmp_path / "head.pt")
    again = DVME.load(tmp_path / "head.pt")
    Xs = [e.X for e in embs]
    np.testing.assert_array_equal(head.predict_proba(Xs), again.predict_proba(Xs))
    np.testing.assert_array_equal(head.attention_weights(Xs), again.attention_weights(Xs))
    same_seed = DVME("binary", dim=32, attention="sigmoid", seed=3, max_epochs=5).fit(
        [e.X[tr] for e in embs], y[tr], [e.X[va] for e in embs], y[va])
    np.testing.assert_array_equal(head.predict_proba(Xs), same_seed.predict_proba(Xs))


def test_attention_does_as_well_as_the_plain_mean_when_every_backbone_carries_the_same_signal():
    # head version 1 scored the raw projections from a random start: softmax lost 0.02-0.04
    recs = fuse_embeddings(same_signal(), task="binary", n_bootstrap=0, baselines=False,
                           attentions=("softmax", "sigmoid", "uniform"))
    uniform = primary(recs, "dvme-uniform")
    assert primary(recs, "dvme-softmax") > uniform - 0.01
    assert primary(recs, "dvme-sigmoid") > uniform - 0.01


def test_attention_routes_each_class_to_the_backbone_that_separates_it():
    recs = fuse_embeddings(informative_for_different_classes(), task="multiclass",
                           n_bootstrap=0, baselines=False,
                           attentions=("softmax", "sigmoid", "uniform"))
    uniform = primary(recs, "dvme-uniform")  # accuracy: the loud rows swamp a linear head
    assert primary(recs, "dvme-softmax") > uniform + 0.15
    assert primary(recs, "dvme-sigmoid") > uniform + 0.15
    for method in ("dvme-softmax", "dvme-sigmoid"):
        per_class = next(r.attention_per_class for r in recs if r.method == method)
        for c in ("0", "1"):
            assert per_class[c]["A"] > per_class[c]["B"] + 0.2
        for c in ("2", "3"):
            assert per_class[c]["B"] > per_class[c]["A"] + 0.2


def fitted(embs, **kw):
    tr, va = embs[0].split == "train", embs[0].split == "val"
    y = embs[0].labels[:, 0]
    return DVME("binary", dim=32, seed=3, max_epochs=5, **kw).fit(
        [e.X[tr] for e in embs], y[tr], [e.X[va] for e in embs], y[va])


def test_head_saved_before_the_attention_fix_loads_and_predicts_as_it_did(tmp_path,
                                                                           monkeypatch):
    embs = complementary(n=1200, noise_backbone=True)
    Xs = [e.X for e in embs]
    with monkeypatch.context() as m:
        m.setattr(DVME, "_head_version", 1)  # the head as it was before the fix
        old = fitted(embs, attention="softmax")
    assert {k.split(".")[0] for k in old.module_.state_dict()} == {"proj", "scorer", "head"}
    old.save(tmp_path / "v1.pt")
    blob = torch.load(tmp_path / "v1.pt", weights_only=True)
    del blob["version"]  # files written before the fix carry no version
    torch.save(blob, tmp_path / "old.pt")
    again = DVME.load(tmp_path / "old.pt")
    np.testing.assert_array_equal(old.predict_proba(Xs), again.predict_proba(Xs))
    np.testing.assert_array_equal(old.attention_weights(Xs), again.attention_weights(Xs))
    again.save(tmp_path / "resaved.pt")  # it stays a version 1 head
    np.testing.assert_array_equal(DVME.load(tmp_path / "resaved.pt").predict_proba(Xs),
                                  old.predict_proba(Xs))
    new = fitted(embs, attention="softmax")
    assert not np.array_equal(new.predict_proba(Xs), old.predict_proba(Xs))


def test_unreadable_or_unknown_head_files_are_refused_naming_the_file(tmp_path):
    head = fitted(complementary(n=600))
    head.save(tmp_path / "head.pt")
    blob = torch.load(tmp_path / "head.pt", weights_only=True)
    torch.save({**blob, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(FusionError, match=r"future\.pt: DVME head version 99"):
        DVME.load(tmp_path / "future.pt")
    torch.save({**blob, "version": 1}, tmp_path / "mislabelled.pt")
    with pytest.raises(FusionError, match=r"mislabelled\.pt: the saved state does not fit"):
        DVME.load(tmp_path / "mislabelled.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(FusionError, match=r"junk\.pt: not a DVME head"):
        DVME.load(tmp_path / "junk.pt")


def test_misaligned_sets_are_refused_with_counts():
    a, b = complementary(n=500)
    b.ids = b.ids.copy()
    b.ids[:3] = ["x1", "x2", "x3"]
    with pytest.raises(FusionError, match="B does not align with A: 3 ids missing, 3 extra"):
        fuse_embeddings([a, b], task="binary")
    b.dataset = "other"
    with pytest.raises(FusionError, match="belongs to dataset other"):
        fuse_embeddings([a, b], task="binary")


def test_cli_fuse_end_to_end(capsys, npz_file, store_dir, tmp_path):
    store = ["--store", str(store_dir)]
    with pytest.raises(SystemExit):
        main(["extract", "--data", str(npz_file), "-b", TINY, "-b", TINY_VIT, "--image-size",
              str(SIZE), *store])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["fuse", "--data", str(npz_file), "-b", TINY, "-b", TINY_VIT, "--image-size",
              str(SIZE), *store, "--attention", "softmax,uniform", "--bootstrap", "20",
              "--heads-dir", str(tmp_path / "heads"), "--json"])
    assert exc.value.code == 0
    recs = json.loads(capsys.readouterr().out)
    methods = {r["method"] for r in recs}
    assert {"dvme-softmax", "dvme-uniform", "concat"} <= methods and len(methods) == 5
    uniform = next(r for r in recs if r["method"] == "dvme-uniform" and r["primary"])
    assert all(abs(v - 0.5) < 1e-6 for v in uniform["attention"].values())
    head = DVME.load(next(r["head_path"] for r in recs if r["head_path"]))
    assert head.attention in ("softmax", "uniform")
    with pytest.raises(SystemExit) as exc:
        main(["fuse", "--data", str(npz_file), "-b", TINY, "--image-size", str(SIZE), *store])
    assert exc.value.code == 1


def test_fuse_grid_persists_runs_that_results_lists(capsys, npz_file, store_dir, tmp_path):
    from featstore import FeatureStore, extract_embeddings, load_dataset, parse_backbone
    from featstore.fusion import fuse_grid, stored_fusion_records

    m = load_dataset(npz_file)
    fs = FeatureStore(store_dir)
    results = extract_embeddings(m, [parse_backbone(b, input_size=SIZE)
                                     for b in (TINY, TINY_VIT)], fs)
    sets = [fs.dataset(m).embedding_set(r.key) for r in results]
    kw = {"task": m.task, "fractions": [0.5, 1.0], "seeds": 1, "attentions": ["uniform"],
          "n_bootstrap": 10, "max_epochs": 5}
    first = fuse_grid(sets, **kw)
    assert not any(r.cached for r in first)
    again = fuse_grid(sets, **kw)
    assert all(r.cached for r in again) and [r.value for r in again] == [
        r.value for r in first]
    more = fuse_grid(sets, **{**kw, "attentions": ["uniform", "softmax"]})
    assert {r.method for r in more if not r.cached} == {"dvme-softmax"}  # only the new one
    assert len(stored_fusion_records([sets[0].dataset])) == len(more)
    with pytest.raises(FusionError, match="2 to 8"):
        fuse_grid(sets[:1], task=m.task)
    with pytest.raises(FusionError, match="attentions = 'max': expected one of softmax"):
        fuse_grid(sets, **{**kw, "attentions": ["max"]})

    with pytest.raises(SystemExit) as exc:
        main(["results", "--data", str(npz_file), "--store", str(store_dir)])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "fusion on test" in out and "dvme-softmax" in out


def one_informative(seed: int, n: int = 1500) -> tuple[list[np.ndarray], np.ndarray]:
    """The known answer: backbone 0 (32-d) carries the binary signal; 1 (128-d) and 2
    (96-d) are noise of five times its scale."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    Xs = []
    for k, (dim, scale) in enumerate(((32, 1.0), (128, 5.0), (96, 5.0))):
        X = rng.normal(size=(n, dim)) * scale
        if k == 0:
            X[:, :6] += 1.2 * s[:, None]
        Xs.append(X.astype(np.float32))
    return Xs, (s > 0).astype(int)


@pytest.mark.parametrize("n", [1500, 400])
def test_attention_goes_to_the_informative_backbone_beside_loud_noise(n):
    from featstore.metrics import primary_score
    from featstore.probe.linear import fit_with_validation

    Xs, y = one_informative(0, n)
    tr, va, te = np.split(np.arange(n), [int(0.6 * n), int(0.8 * n)])
    head = DVME("binary", attention="softmax", seed=0).fit(
        [X[tr] for X in Xs], y[tr], [X[va] for X in Xs], y[va])
    alpha = head.attention_weights([X[te] for X in Xs]).mean(0)
    assert alpha[0] > 0.5 and alpha[0] > 2 * alpha[1:].max(), alpha
    auc = head.score([X[te] for X in Xs], y[te])
    alone = fit_with_validation(Xs[0][tr], y[tr], Xs[0][va], y[va], task="binary").probe
    cat = [np.concatenate([X[rows] for X in Xs], 1) for rows in (tr, va, te)]
    concat = fit_with_validation(cat[0], y[tr], cat[1], y[va], task="binary").probe
    assert auc >= primary_score("binary", y[te], alone.predict_proba(Xs[0][te])) - 0.015
    assert auc >= primary_score("binary", y[te], concat.predict_proba(cat[2])) - 0.005
    assert head.start_ == "concat probe"  # chosen on val over the head from a random start


def test_a_random_start_that_wins_val_by_less_than_its_noise_does_not_replace_the_concat_start(
        monkeypatch):
    # 90 training rows, 30 val rows: head v4 took the random start here because its val AUC
    # was higher, and it scored 0.17 below the concat probe on test
    from featstore.metrics import primary_score
    from featstore.probe.linear import fit_with_validation

    embs = complementary(n=150, seed=4)
    y, split = embs[0].labels[:, 0], embs[0].split
    tr, va, te = (split == s for s in ("train", "val", "test"))
    cat = [np.concatenate([e.X[rows] for e in embs], 1) for rows in (tr, va, te)]
    concat = primary_score("binary", y[te], fit_with_validation(
        cat[0], y[tr], cat[1], y[va], task="binary").probe.predict_proba(cat[2]))

    def fit():
        return DVME("binary", attention="sigmoid", seed=4).fit(
            [e.X[tr] for e in embs], y[tr], [e.X[va] for e in embs], y[va])

    head = fit()
    assert head.start_ == "concat probe"
    assert head.score([e.X[te] for e in embs], y[te]) >= concat - 0.01
    monkeypatch.setattr(DVME, "_head_version", 4)
    old = fit()
    assert old.start_ == "random" and old.score([e.X[te] for e in embs], y[te]) < concat - 0.1


def test_one_fusion_run_fits_the_concat_probe_once_for_the_baseline_and_every_head(
        monkeypatch):
    import featstore.probe.linear as linear
    from featstore.fusion import ATTENTIONS

    widths = []
    fit = linear.fit_with_validation

    def counted(X, *a, **k):
        widths.append(X.shape[1])
        return fit(X, *a, **k)

    monkeypatch.setattr(linear, "fit_with_validation", counted)
    recs = fuse_embeddings(complementary(n=600), task="binary", attentions=ATTENTIONS,
                           n_bootstrap=0, max_epochs=3)
    assert {r.method for r in recs} == {*(f"dvme-{a}" for a in ATTENTIONS), "concat",
                                        "single:A", "single:B"}
    assert sorted(widths) == [32, 48, 80]  # before: the concat probe once per head too


def test_a_head_given_the_concat_probe_is_the_head_that_fits_it_itself():
    from featstore.probe.linear import fit_with_validation

    Xs, y = one_informative(0, 600)
    tr, va, te = np.split(np.arange(600), [360, 480])
    cat = [np.concatenate([X[rows] for X in Xs], 1) for rows in (tr, va, te)]
    concat = fit_with_validation(cat[0], y[tr], cat[1], y[va], task="binary")

    def head(**given):
        return DVME("binary", attention="uniform", seed=1).fit(
            [X[tr] for X in Xs], y[tr], [X[va] for X in Xs], y[va], **given)

    alone, shared = head(), head(concat_probe=concat)
    for (name, a), b in zip(alone.module_.state_dict().items(),
                            shared.module_.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # uniform attention learns nothing from the concat start: that head is the concat probe,
    # written onto the standardised embeddings
    assert shared.start_ == "concat probe"
    np.testing.assert_allclose(shared.predict_proba([X[te] for X in Xs]),
                               concat.probe.predict_proba(cat[2]), atol=1e-5)
    other = fit_with_validation(cat[0][:, :32], y[tr], cat[1][:, :32], y[va], task="binary")
    with pytest.raises(FusionError, match="32 features and 1 outputs; this binary head "
                                          "fuses 256 features"):
        head(concat_probe=other)
    fewer = fit_with_validation(cat[0][:200], y[tr][:200], cat[1], y[va], task="binary")
    with pytest.raises(FusionError, match="fitted on other rows than these"):
        head(concat_probe=fewer)


def test_bad_features_in_a_fusion_run_are_a_fusion_error():
    embs = complementary(n=300)
    embs[1].X[7, 3] = np.nan
    for attentions in (("softmax",), ()):
        with pytest.raises(FusionError, match="NaN or inf"):
            fuse_embeddings(embs, task="binary", attentions=attentions, n_bootstrap=0)


def test_a_class_absent_from_train_is_fused_as_the_probe_takes_it():
    """Four classes, class 3 only in val and test: fuse trains its heads on the three classes
    train holds and scores test, as the probe does, instead of failing on val's class 3."""
    from featstore.probe import probe_embeddings

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    y[:360] %= 3  # the train rows (60%): classes 0 to 2
    embs = embedding_sets([(name, rng.normal(size=(600, 16)) + scale * y[:, None])
                           for name, scale in (("A", 0.5), ("B", 1.0))], y)
    records = fuse_embeddings(embs, task="multiclass", attentions=("softmax", "sigmoid"),
                              n_bootstrap=10)
    probed = probe_embeddings(embs[1], task="multiclass", n_bootstrap=10)
    assert {r.method for r in records if r.primary} == {
        "dvme-softmax", "dvme-sigmoid", "concat", "single:A", "single:B"}
    assert primary(records, "single:B") == next(r.value for r in probed if r.primary)
    assert all(np.isfinite(r.value) and r.n_test == 120 for r in records if r.primary)
