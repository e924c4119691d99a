"""A finetuned network as a backbone: ``finetuned:<run id>`` works wherever a spec does
(extract, probe, fuse, finetune), with an embedding key of its own (its weights' sha256)."""

from __future__ import annotations

import os
from pathlib import Path

from featstore._hashing import sha256_bytes
from featstore.errors import FinetuneError
from featstore.models.preprocessing import Preprocessing
from featstore.models.registry import (  # noqa: F401  (backbone_spec: its old home)
    EMBEDDING_LAYER,
    BackboneSpec,
    backbone_spec,
    register_scheme,
)
from featstore.store.feature_store import FeatureStore
from featstore.store.layout import CHECKPOINTS_GROUP

PREFIX = "finetuned:"


def weights_cache() -> Path:
    """Where finetuned weights fetched from a store are kept: ``$XDG_CACHE_HOME/featstore/
    finetuned/<sha256>.pt`` (named by content, so a file there is the weights)."""
    base = os.path.expanduser(os.getenv("XDG_CACHE_HOME", "~/.cache"))
    return Path(base) / "featstore" / "finetuned"


def finetuned_spec(store: FeatureStore, text: str) -> BackboneSpec:
    """The spec of a finished finetuning run's best weights, ``finetuned:<run id prefix>``.

    Raises
    ------
    FinetuneError
        No run or several runs match, the run has not finished, or its weights are missing
        or do not match their recorded sha256.
    """
    prefix = text.removeprefix(PREFIX)
    group, _, prefix = prefix.rpartition("/")  # finetuned:<dataset group>/<run id>
    hits = [(ds, rid, run) for ds in store.datasets() if not group or ds.name == group
            for rid, run in ds.finetune_runs.by_id().items() if rid.startswith(prefix)]
    if not prefix or not hits:
        have = ", ".join(rid[:12] for ds in store.datasets() for rid in
                         ds.finetune_runs.by_id()) or "none"
        raise FinetuneError(f"--backbone {text}: no finetuning run {prefix!r} in store "
                            f"{store.root} (runs: {have})")
    if len(hits) > 1:
        if len({rid for _, rid, _ in hits}) == 1:  # one recipe run on several datasets
            raise FinetuneError(
                f"--backbone {text}: run {hits[0][1][:12]} exists in {len(hits)} datasets; "
                "name one: " + ", ".join(f"finetuned:{ds.name}/{rid[:12]}"
                                         for ds, rid, _ in hits))
        raise FinetuneError(f"--backbone {text}: {len(hits)} runs match: "
                            f"{', '.join(rid[:16] for _, rid, _ in hits)}; give more of the id")
    ds, rid, run = hits[0]
    if run.get("status") != "complete":
        raise FinetuneError(f"--backbone {text}: run {rid[:12]} has not finished; resume it "
                            "with the same 'featstore finetune' command")
    config = run["config"]
    if config.get("layer", EMBEDDING_LAYER) != EMBEDDING_LAYER:
        raise FinetuneError(f"--backbone {text}: runs of {config['layer']} specs are not "
                            "backbones yet")
    want = run["finetuned_sha256"]
    path = weights_cache() / f"{want}.pt"
    if not path.is_file():
        data = store.objects.get(f"{CHECKPOINTS_GROUP}/{ds.name}/{rid}/backbone.pt")
        if data is None or sha256_bytes(data) != want:
            raise FinetuneError(f"--backbone {text}: the weights of run {rid[:12]} are "
                                f"{'missing' if data is None else 'damaged'} in {store.root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    prep = Preprocessing(**{**config["preprocessing"],
                            "mean": tuple(config["preprocessing"]["mean"]),
                            "std": tuple(config["preprocessing"]["std"])})
    return BackboneSpec(name=f"{PREFIX}{rid[:12]}", architecture=run["architecture"],
                        weights=str(path), preprocessing=prep, input_size=prep.input_size,
                        source=f"finetuned by featstore, run {rid} of {config['backbone']} "
                               f"on {ds.name}")


register_scheme(PREFIX, finetuned_spec)
