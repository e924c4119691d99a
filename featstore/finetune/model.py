"""The finetuned model: backbone and linear head, freezing, parameter groups with layer
decay, the LP-FT start from a probe head, and the task's loss and targets."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from featstore.data.manifest import Manifest
from featstore.errors import FeatstoreError, FinetuneError
from featstore.finetune.config import FinetuneConfig
from featstore.models.registry import BackboneSpec
from featstore.store.feature_store import FeatureStore


class Classifier(torch.nn.Module):
    """The backbone's pooled pre-logits features and a fresh linear head."""

    def __init__(self, backbone: torch.nn.Module, dim: int, n_out: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def label_array(manifest: Manifest) -> np.ndarray:
    return manifest.labels if manifest.task == "multilabel" else manifest.labels[:, 0]


def n_outputs(manifest: Manifest) -> int:
    if manifest.task == "multilabel":
        return manifest.labels.shape[1]
    return 1 if manifest.task == "binary" else manifest.num_classes


def freeze(model: Classifier, until: str | None) -> None:
    """Freeze the backbone's parameters up to and including those of module ``until``
    (registration order: the stem and the first stages of a CNN, the first blocks of a
    ViT)."""
    if until is None:
        return
    params = list(model.backbone.named_parameters())
    inside = [i for i, (n, _) in enumerate(params) if n.startswith(until + ".")]
    if not inside:
        tops = list(dict.fromkeys(n.split(".")[0] for n, _ in params))
        raise FinetuneError(f"--freeze-until {until!r}: no module with parameters of that "
                            f"name in the backbone (top-level: {', '.join(tops[:12])})")
    for i, (_, p) in enumerate(params):
        p.requires_grad = i > inside[-1]


def param_groups(model: Classifier, config: FinetuneConfig) -> list[dict[str, Any]]:
    """timm's parameter groups: no weight decay on norms and biases, and with
    ``layer_decay`` each backbone layer's ``lr_scale`` from the backbone's own group matcher
    (the head is the top layer, scale 1); timm's schedulers apply ``lr_scale``."""
    from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay

    head = [p for p in model.head.parameters() if p.requires_grad]
    if config.layer_decay is None:
        return param_groups_weight_decay(model, config.weight_decay)
    if not hasattr(model.backbone, "group_matcher"):
        raise FinetuneError("--layer-decay: this backbone has no layer grouping in timm")
    groups = param_groups_layer_decay(model.backbone, config.weight_decay,
                                      layer_decay=config.layer_decay)
    groups = [g for g in groups if g["params"]]
    if len({g.get("lr_scale", 1.0) for g in groups}) < 2:
        raise FinetuneError("--layer-decay: timm puts every parameter of this backbone in "
                            "one layer, so it would change nothing")
    decay = [p for p in head if p.ndim > 1]
    no_decay = [p for p in head if p.ndim <= 1]
    return groups + [{"params": decay, "weight_decay": config.weight_decay, "lr_scale": 1.0},
                     {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]


def embedding_width(model: torch.nn.Module) -> int:
    inner = getattr(model, "module", model)
    return inner.head.out_features


def init_from_probe(model: Classifier, store: FeatureStore, manifest: Manifest,
                    spec: BackboneSpec, loaded: Any, config: FinetuneConfig,
                    train_ids: str) -> None:
    """Set the head to the cached linear probe of the same network (weights, preprocessing,
    layer; float32, fp32 embeddings) trained on the same rows (its training-id hash), with
    its standardisation folded in: ``((f - mean) / scale) W + b = f W' + b'``. Reads the
    store only (a run looks its probe up before it writes anything).

    Raises
    ------
    FinetuneError
        No such probe is cached (the command that makes it is named).
    """
    want = loaded.preprocessing.to_dict()
    try:
        sets = store.dataset(manifest).embedding_sets()
    except FeatstoreError:  # no dataset group: nothing extracted, no probe
        sets = []
    for es in sets:
        prov = es.provenance
        if (prov.weights_sha256 != loaded.weights_sha256 or es.dtype != "float32"
                or prov.preprocessing != want or prov.layer != spec.layer
                or prov.precision != "fp32"):
            continue
        runs = es.probe_runs.by_id().items()  # the current solver's probe before an older one
        for run_id, run in sorted(runs, key=lambda r: "solver" not in r[1].get("config", {})):
            cfg, recs = run.get("config", {}), run.get("records") or []
            if (cfg.get("probe") == "linear" and recs
                    and recs[0].get("train_ids_sha256") == train_ids):
                head = es.probe_head(run_id)
                if head is not None:
                    fold_probe_head(model, head, f"probe run {run_id[:12]}")
                    return
    raise FinetuneError(
        f"--init-head probe: no linear probe of {spec.alias} on these train rows (fraction "
        f"{config.fraction}, seed {config.seed}) is cached in {store.root}; run 'featstore "
        f"extract' and 'featstore probe --fractions {config.fraction:g} --seeds "
        f"{config.seed + 1}' with the same backbone first (runs made before probe heads were "
        "kept need --recompute)")


def fold_probe_head(model: Classifier, head: dict[str, np.ndarray], label: str) -> None:
    """Set ``model``'s head to a linear probe's ``coef`` (D, outputs), ``intercept``,
    ``mean`` and ``scale``: ``((f - mean) / scale) W + b = f (W / scale) + (b - mean/scale W)``.
    A multiclass probe whose train rows lacked the top classes has fewer outputs; those
    classes keep a zero start.

    Raises
    ------
    FinetuneError
        The probe's width does not fit the head (other features or more outputs).
    """
    coef, scale = head["coef"], head["scale"]
    outputs, dim = model.head.out_features, model.head.in_features
    if coef.ndim != 2 or coef.shape[0] != dim or coef.shape[1] > outputs:
        raise FinetuneError(f"--init-head probe: {label} has a {tuple(coef.shape)} head, the "
                            f"network gives {dim} features for {outputs} outputs")
    weight = (coef / scale[:, None]).T
    bias = head["intercept"] - (head["mean"] / scale) @ coef
    n = coef.shape[1]
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[:n] = torch.as_tensor(weight, dtype=torch.float32)
        model.head.bias[:n] = torch.as_tensor(bias, dtype=torch.float32)


def backbone_state_bytes(model: Classifier) -> bytes:
    """The finetuned backbone's state dict (no head), as torch.save bytes."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}, buf)
    return buf.getvalue()
