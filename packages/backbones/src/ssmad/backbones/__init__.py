"""ssmad-backbones: frozen multi-scale feature extractors and EfficientAD's patch description network.

Registered ``backbone`` components (build with ``ssmad.core.build("backbone", name, **params)``):

- ``resnet18``, ``resnet34``, ``resnet50``, ``wide_resnet50_2`` (torchvision; layers ``layer1``…``layer4``),
  ``vgg19`` (``block1``…``block5``, ``pool1``…``pool5``), ``efficientnet_lite0`` (timm; ``stage1``…``stage7``,
  ImageNet weights offline): ``forward(x) -> list[Tensor]`` for x B×3×H×W in [0, 1], one map per layer;
  attributes ``channels`` and ``strides``; frozen (eval, no grad), ImageNet normalisation inside.
- ``pdn_small``, ``pdn_medium``: EfficientAD's PDN (384 channels, stride 4), loading EfficientAD teacher files
  or the checkpoints of ``python -m ssmad.backbones distill``.

Helpers: :func:`concat_stages` (resize + concatenate maps), :func:`efficientnet_lite0_classifier` (the full timm
classifier with the offline ImageNet weights), :func:`distill` (PDN distillation).
"""

import importlib

# Names resolve on first use (PEP 562): importing the package (as the plugin registry does) loads neither
# torchvision nor timm.
_EXPORTS = {
    "base": ("IMAGENET_MEAN", "IMAGENET_STD", "FrozenBackbone", "StageInfo", "concat_stages"),
    "distillation": ("DistillSettings", "distill", "make_projection", "read_image"),
    "efficientnet": ("EfficientNetLite0Backbone", "efficientnet_lite0_classifier", "lite0_weights_path",
                     "map_lite0_state_dict"),
    "pdn": ("PDN", "PDNWeights", "pdn_output_size", "read_pdn_file", "save_pdn_weights"),
    "stages": ("LITE0_TABLE", "STAGE_TABLES"),
    "torchvision_backbones": ("ResNetBackbone", "VGG19Backbone"),
    "weights": ("hub_checkpoint_dir", "read_state_dict"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_WHERE))


__version__ = "0.3.0"

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LITE0_TABLE", "PDN", "STAGE_TABLES", "DistillSettings",
    "EfficientNetLite0Backbone", "FrozenBackbone", "PDNWeights", "ResNetBackbone", "StageInfo", "VGG19Backbone",
    "concat_stages", "distill", "efficientnet_lite0_classifier", "hub_checkpoint_dir",
    "lite0_weights_path", "make_projection", "map_lite0_state_dict", "pdn_output_size", "read_image",
    "read_pdn_file", "read_state_dict", "save_pdn_weights",
]
