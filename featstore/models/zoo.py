"""The study's backbones (Truong et al. 2021): the released files, their key layouts, and the
preprocessing their authors evaluated with. Loaded strictly through their adapters.
"""

from __future__ import annotations

from featstore.models.preprocessing import Preprocessing
from featstore.models.registry import CLS_LAST4, BackboneSpec, CheckpointAdapter, register_spec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _eval_224(interpolation: str, *, normalise: bool = True) -> Preprocessing:
    """Resize the shorter side to 256, centre-crop 224 (crop_pct 0.875)."""
    return Preprocessing(
        input_size=224, crop_pct=0.875, interpolation=interpolation,
        mean=IMAGENET_MEAN if normalise else (0.0, 0.0, 0.0),
        std=IMAGENET_STD if normalise else (1.0, 1.0, 1.0),
    )


_DINO_ADAPTER = CheckpointAdapter(subdicts=("teacher",), strip_prefixes=("module.", "backbone."),
                                  drop_prefixes=("head", "fc"))

SUPERVISED_RN50 = register_spec(BackboneSpec(
    name="supervised-rn50", architecture="resnet50.tv_in1k", weights=None, dim=2048,
    preprocessing=_eval_224("bilinear"),
    weights_file="resnet50-0676ba61.pth",
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    source="torchvision IMAGENET1K_V1, supervised ImageNet",
))

SIMCLR_RN50 = register_spec(BackboneSpec(
    name="simclr-rn50", architecture="resnet50", weights=None, dim=2048,
    # SimCLR was trained on [0, 1] pixels without mean/std normalisation
    preprocessing=_eval_224("bilinear", normalise=False),
    adapter=CheckpointAdapter(subdicts=("state_dict",), strip_prefixes=("module.",),
                              drop_prefixes=("fc",)),
    weights_file="resnet50-1x.pth",
    source="SimCLR v1 ResNet-50 (1x), TF release converted to PyTorch ({'state_dict': ...})",
    manual_download="convert the official TensorFlow SimCLR v1 ResNet-50 (1x) checkpoint "
                    "with the common simclr-converter, which writes resnet50-1x.pth",
))

SIMCLR_RN50_VISSL = register_spec(BackboneSpec(
    name="simclr-rn50-vissl", architecture="resnet50", weights=None, dim=2048,
    preprocessing=_eval_224("bilinear"),  # VISSL trained SimCLR with ImageNet normalisation
    adapter=CheckpointAdapter(subdicts=("classy_state_dict.base_model.model.trunk",),
                              strip_prefixes=("_feature_blocks.",), drop_prefixes=()),
    weights_file="model_final_checkpoint_phase999.torch",
    source="SimCLR ResNet-50 trained by VISSL (classy_state_dict trunk)",
    manual_download="download VISSL's SimCLR ResNet-50 checkpoint from the VISSL model zoo",
))

SWAV_RN50 = register_spec(BackboneSpec(
    name="swav-rn50", architecture="resnet50", weights=None, dim=2048,
    preprocessing=_eval_224("bilinear"),
    adapter=CheckpointAdapter(subdicts=("state_dict",), strip_prefixes=("module.",),
                              drop_prefixes=("projection_head", "prototypes")),
    weights_file="swav_800ep_pretrain.pth.tar",
    url="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
    source="SwAV ResNet-50, 800 epochs (facebookresearch/swav)",
))

DINO_RN50 = register_spec(BackboneSpec(
    name="dino-rn50", architecture="resnet50", weights=None, dim=2048,
    preprocessing=_eval_224("bicubic"), adapter=_DINO_ADAPTER,
    weights_file="dino_resnet50_pretrain.pth",
    url="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
    source="DINO ResNet-50 (facebookresearch/dino)",
))

DINO_VITS16 = register_spec(BackboneSpec(
    name="dino-vits16", architecture="vit_small_patch16_224.dino", weights=None, dim=384,
    # DINO's eval transform (256/224 bicubic), not timm's tag default (crop_pct 0.9)
    preprocessing=_eval_224("bicubic"), adapter=_DINO_ADAPTER,
    weights_file="dino_deitsmall16_pretrain.pth",
    url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
        "dino_deitsmall16_pretrain.pth",
    source="DINO ViT-S/16 (facebookresearch/dino), CLS token",
))

DINO_VITS16_LAST4 = register_spec(BackboneSpec(
    name="dino-vits16-last4", architecture="vit_small_patch16_224.dino", weights=None,
    dim=1536, layer=CLS_LAST4, preprocessing=_eval_224("bicubic"), adapter=_DINO_ADAPTER,
    weights_file=DINO_VITS16.weights_file, url=DINO_VITS16.url,
    source="DINO ViT-S/16, CLS tokens of the last 4 blocks (DINO's linear evaluation)",
))
