"""Building a backbone spec: the timm architecture, its weights loaded strictly, its layer."""

from __future__ import annotations

from dataclasses import replace

import timm
import torch

from featstore._hashing import read_settled, sha256_bytes, state_dict_sha256
from featstore.errors import BackboneError, CheckpointError
from featstore.models.checkpoint import load_checkpoint_strict
from featstore.models.identity import remember
from featstore.models.preprocessing import Preprocessing
from featstore.models.registry import (
    CLS_LAST4,
    EMBEDDING_LAYER,
    RANDOM_SEED,
    BackboneSpec,
    LoadedBackbone,
)
from featstore.models.weights import resolve_weights


def build_backbone(spec: BackboneSpec) -> LoadedBackbone:
    """Build the architecture, load its weights strictly, and return it in eval mode (CPU).

    Raises
    ------
    WeightsNotFoundError
        The checkpoint file is not there.
    CheckpointError
        The checkpoint's keys or shapes do not match the architecture exactly.
    """
    state = None
    if spec.is_random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = _create(spec)
        weights_sha = state_dict_sha256(model.state_dict())
    else:
        path = resolve_weights(spec)
        model = _create(spec)
        # read once: the key's sha256 and the network come from the same bytes, whatever
        # happens to the file meanwhile (a training script saving over it)
        try:
            data, state = read_settled(path)
        except OSError as e:  # gone or unreadable since it was found
            raise CheckpointError(f"backbone {spec.alias}: cannot read {path}: "
                                  f"{e.strerror or e}") from None
        weights_sha = sha256_bytes(data)
        load_checkpoint_strict(model, path, spec.adapter, label=spec.alias, data=data)
        del data
    model.eval()
    prep = spec.preprocessing or Preprocessing.from_timm(model)
    if spec.input_size:
        prep = replace(prep, input_size=spec.input_size)
    if spec.layer == CLS_LAST4:
        model = CLSLastBlocks(model, 4)
    elif spec.layer != EMBEDDING_LAYER:
        raise BackboneError(f"backbone {spec.alias}: unknown layer {spec.layer!r}")
    # timm's pre-logits width: head_hidden_size where a head adds a layer (MobileNetV3's
    # conv_head gives 1024 from 576 features), else num_features
    dim = spec.dim or int(getattr(model, "head_hidden_size", None)
                          or getattr(model, "num_features", 0))
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, prep.input_size, prep.input_size))
    except Exception as e:  # timm raises assorted errors for unsupported sizes
        raise BackboneError(
            f"backbone {spec.alias}: cannot run at input size {prep.input_size}px "
            f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if out.ndim != 2 or (dim and out.shape[1] != dim):
        raise BackboneError(
            f"backbone {spec.alias}: embedding has shape {tuple(out.shape[1:])}, expected ({dim},)"
        )
    loaded = LoadedBackbone(spec, model, prep, weights_sha, int(out.shape[1]))
    remember(loaded, state)  # the next key of this spec needs no build
    return loaded


def _create(spec: BackboneSpec) -> torch.nn.Module:
    """The timm architecture without a classifier. A ViT whose input size is fixed
    (``strict_img_size``) is created at ``spec.input_size`` when one is asked for, its
    position embeddings sized to that grid (a checkpoint's are resampled when it loads)."""
    model = timm.create_model(spec.architecture, pretrained=False, num_classes=0)
    pe = getattr(model, "patch_embed", None)
    size = spec.input_size
    if (size and pe is not None and getattr(pe, "strict_img_size", False)
            and tuple(getattr(pe, "img_size", ())) != (size, size)
            and not getattr(model, "dynamic_img_size", False)):
        model = timm.create_model(spec.architecture, pretrained=False, num_classes=0,
                                  img_size=size)
    return model


class CLSLastBlocks(torch.nn.Module):
    """A timm ViT returning the final-normed CLS tokens of its last ``n`` blocks, concatenated.

    This is DINO's linear-evaluation feature (``get_intermediate_layers`` + ``norm``): 4 x 384
    = 1536 dimensions for ViT-S/16. It is the ``cls-last4`` layer of a spec.
    """

    def __init__(self, vit: torch.nn.Module, n: int) -> None:
        super().__init__()
        if not hasattr(vit, "blocks") or not hasattr(vit, "_pos_embed"):
            raise BackboneError(f"layer {CLS_LAST4!r} needs a timm VisionTransformer")
        self.vit, self.n = vit, n
        self.num_features = vit.num_features * n
        self.pretrained_cfg = vit.pretrained_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))
        outs = []
        for i, blk in enumerate(v.blocks):
            x = blk(x)
            if i >= len(v.blocks) - self.n:
                outs.append(v.norm(x)[:, 0])
        return torch.cat(outs, dim=-1)
