"""Stage tables of every backbone (channels and stride per selectable layer).

Plain data, importable without torchvision or timm, so that registering the components (and validating a
config) stays fast; the modules that build the networks import the heavy libraries.
"""

from __future__ import annotations

from .base import StageInfo

RESNET_EXPANSION = {"resnet18": 1, "resnet34": 1, "resnet50": 4, "wide_resnet50_2": 4}
VGG_CHANNELS = (64, 128, 256, 512, 512)


def _resnet_table(expansion: int) -> dict[str, StageInfo]:
    return {f"layer{i + 1}": StageInfo(64 * 2**i * expansion, 4 * 2**i) for i in range(4)}


def _vgg_table() -> dict[str, StageInfo]:
    table = {}
    for i, ch in enumerate(VGG_CHANNELS):
        table[f"block{i + 1}"] = StageInfo(ch, 2**i)
        table[f"pool{i + 1}"] = StageInfo(ch, 2 ** (i + 1))
    return table  # network order: block1, pool1, block2, pool2, ...


STAGE_TABLES: dict[str, dict[str, StageInfo]] = {
    **{name: _resnet_table(exp) for name, exp in RESNET_EXPANSION.items()},
    "vgg19": _vgg_table(),
}

LITE0_TABLE: dict[str, StageInfo] = {
    f"stage{i + 1}": StageInfo(ch, st)
    for i, (ch, st) in enumerate([(16, 2), (24, 4), (40, 8), (80, 16), (112, 16), (192, 32), (320, 32)])
}
