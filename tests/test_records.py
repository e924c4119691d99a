"""Probe, finetuning and fusion records are one ScoreRecord each, with what names their run;
records stored by older featstores read back."""

from __future__ import annotations

import math
from dataclasses import fields

from featstore.finetune import FinetuneRecord
from featstore.fusion import FuseRecord
from featstore.probe import ProbeRecord
from featstore.records import ScoreRecord

SCORE = dict(dataset="d-1", task="binary", metric="auc", value=0.9, primary=True, ci_low=0.8,
             ci_high=0.95, fraction=1.0, seed=0, n_train=10, n_val=5, n_test=5,
             train_ids_sha256="ab", run_id="r1")


def test_the_three_kinds_share_the_score_fields_declared_once():
    shared = {f.name for f in fields(ScoreRecord)}
    for cls in (ProbeRecord, FinetuneRecord, FuseRecord):
        assert issubclass(cls, ScoreRecord)
        own = {f.name for f in fields(cls)} - shared
        assert own and not own & shared
    assert FinetuneRecord(**SCORE, backbone="b", key="k", val_source="val").probe == "finetune"


def test_a_finetune_record_stored_as_a_probe_record_reads_back():
    # what featstore wrote before FinetuneRecord: a probe record with probe = "finetune"
    old = {**SCORE, "value": None, "backbone": "b", "key": "k", "probe": "finetune",
           "val_source": "val", "l2": None, "converged": None, "chosen_on_val": True,
           "random_weights": False, "hyperparameter": "lr=0.001, best epoch 1/1",
           "cached": False, "n_excluded": 0, "config": {"recipe": "x"}}
    r = FinetuneRecord.from_stored(old)
    assert r.cached and math.isnan(r.value) and r.ci_low == 0.8
    assert r.probe == "finetune" and r.config == {"recipe": "x"}
    assert "l2" not in r.to_dict()


def test_a_stored_probe_record_reads_back_equal_but_cached():
    r = ProbeRecord(**SCORE, backbone="b", key="k", probe="linear", val_source="val", l2=0.1,
                    converged=True)
    back = ProbeRecord.from_stored(r.to_dict())
    assert back.cached and back.to_dict() == {**r.to_dict(), "cached": True}
