"""torchvision ResNet-18/34/50, Wide-ResNet-50-2 and VGG-19 as frozen multi-scale feature extractors.

Selectable layers (map size = ``ceil(H / stride)`` for the ResNets, ``floor(H / stride)`` for VGG-19):

========================  ===========================  ======================  ==================
backbone                  layer                        channels                stride
========================  ===========================  ======================  ==================
resnet18 / resnet34       layer1 / 2 / 3 / 4           64 / 128 / 256 / 512    4 / 8 / 16 / 32
resnet50, wide_resnet50_2 layer1 / 2 / 3 / 4           256 / 512 / 1024 / 2048 4 / 8 / 16 / 32
vgg19                     block1 … block5 (last ReLU   64 / 128 / 256 / 512 /  1 / 2 / 4 / 8 / 16
                          of the block, before pool)   512
vgg19                     pool1 … pool5 (after the     same as blockN          2 / 4 / 8 / 16 / 32
                          block's max-pool)
========================  ===========================  ======================  ==================

``layer1`` includes the stem (conv1, bn1, relu, maxpool). ``blockN`` is VGG's ``reluN_last`` (``relu1_2``,
``relu2_2``, ``relu3_4``, ``relu4_4``, ``relu5_4``), the convention of timm's ``features_only`` VGG.

Weights: ``"imagenet"`` is ``IMAGENET1K_V1`` of torchvision's weights enum — the weights that
``pretrained=True`` gave and that the anomaly-detection literature (PatchCore, EfficientAD, ALMRR's code)
used; ``"IMAGENET1K_V2"`` picks the newer recipe where torchvision has one (resnet50, wide_resnet50_2).
Any other string is a local state-dict file (torchvision naming; a ``module.``/``model.`` prefix or a
``{"state_dict": ...}`` wrapper is accepted; ``fc``/``classifier`` and unused deep stages may be absent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torchvision.models as tvm
from torch import nn

from ssmad.core import ConfigError

from .base import FrozenBackbone
from .stages import RESNET_EXPANSION, STAGE_TABLES
from .weights import load_into, read_state_dict, torchvision_state_dict, unwrap_state_dict

VGG19_BLOCK_ENDS = (4, 9, 18, 27, 36)  # index of each max-pool in vgg19.features
RESNET_MODELS: dict[str, tuple[Callable[..., nn.Module], Any, int]] = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights, RESNET_EXPANSION["resnet18"]),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights, RESNET_EXPANSION["resnet34"]),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights, RESNET_EXPANSION["resnet50"]),
    "wide_resnet50_2": (tvm.wide_resnet50_2, tvm.Wide_ResNet50_2_Weights, RESNET_EXPANSION["wide_resnet50_2"]),
}


def load_torchvision_weights(model: nn.Module, name: str, weights_enum_cls: Any, weights: str,
                             kept: nn.Module, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Fill ``model`` from ``weights``: ``"imagenet"`` / an enum member name, or a local state-dict file."""
    members = [m.name for m in weights_enum_cls]
    if weights.lower() == "imagenet":
        sd = torchvision_state_dict(name, weights_enum_cls.IMAGENET1K_V1)
        source = f"ImageNet weights of {name} ({weights_enum_cls.IMAGENET1K_V1.url.rsplit('/', 1)[-1]})"
    elif weights in members:
        member = weights_enum_cls[weights]
        sd = torchvision_state_dict(name, member)
        source = f"{weights} weights of {name} ({member.url.rsplit('/', 1)[-1]})"
    elif weights.upper().startswith("IMAGENET1K_"):
        raise ConfigError(f"backbone {name!r}: unknown weights {weights!r}; torchvision has "
                          f"{', '.join(members)} (or use 'imagenet', a file path, or none)")
    else:
        sd = unwrap_state_dict(read_state_dict(weights, f"weights file for {name}"))
        source = f"weights file {weights} for {name}"
    load_into(model, sd, kept=kept, source=source, ignore_prefixes=ignore_prefixes)


class ResNetBackbone(FrozenBackbone):
    """ResNet / Wide-ResNet stages ``layer1``…``layer4`` (strides 4, 8, 16, 32)."""

    def __init__(self, name: str = "resnet50", layers: Sequence[str] = ("layer1", "layer2", "layer3"),
                 weights: str | None = "imagenet") -> None:
        if name not in RESNET_MODELS:
            raise ConfigError(f"unknown ResNet {name!r}; available: {', '.join(RESNET_MODELS)}")
        ctor, enum_cls, _ = RESNET_MODELS[name]
        model = ctor(weights=None)
        stages = [
            ("layer1", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)),
            ("layer2", model.layer2),
            ("layer3", model.layer3),
            ("layer4", model.layer4),
        ]
        super().__init__(name, stages, STAGE_TABLES[name], layers)
        if weights is not None:
            load_torchvision_weights(model, name, enum_cls, weights, kept=self.stages)


class VGG19Backbone(FrozenBackbone):
    """VGG-19 (no batch norm): ``block1``…``block5`` before each max-pool, ``pool1``…``pool5`` after it."""

    def __init__(self, layers: Sequence[str] = ("block2", "block3", "block4"),
                 weights: str | None = "imagenet") -> None:
        # only the convolutional part is built (the 123 M-parameter classifier is never needed); it keeps
        # torchvision's module names (features.N) and initialisation, so torchvision files load unchanged
        model = nn.Module()
        model.features = feats = tvm.vgg.make_layers(tvm.vgg.cfgs["E"])
        for m in feats.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        stages = []
        start = 0
        for i, end in enumerate(VGG19_BLOCK_ENDS):
            stages.append((f"block{i + 1}", feats[start:end]))  # slicing keeps torchvision's indices
            stages.append((f"pool{i + 1}", feats[end]))
            start = end + 1
        super().__init__("vgg19", stages, STAGE_TABLES["vgg19"], layers)
        if weights is not None:
            load_torchvision_weights(model, "vgg19", tvm.VGG19_Weights, weights, kept=self.stages,
                                     ignore_prefixes=("classifier.",))
