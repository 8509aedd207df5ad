"""EfficientNet-Lite0: the offline ImageNet weights are real (they classify photographs) and map into timm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssmad.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    efficientnet_lite0_classifier,
    lite0_weights_path,
    map_lite0_state_dict,
    read_state_dict,
)
from ssmad.core import DataError, build

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def classifier():
    return efficientnet_lite0_classifier()


def _prepare(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_weights_file_is_the_packaged_one():
    path = lite0_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    sd = read_state_dict(path)
    assert len(sd) == 296 and sum(not k.endswith("num_batches_tracked") for k in sd) == 247


def test_imagenet_top1_on_real_photographs(classifier):
    batch = torch.cat([_prepare(skimage_data.chelsea()), _prepare(skimage_data.coffee())])
    with torch.no_grad():
        top1 = classifier(batch).argmax(1).tolist()
    assert 281 <= top1[0] <= 285, top1  # a domestic cat (tabby ... Egyptian cat)
    assert top1[1] in (967, 968), top1  # espresso / cup


def test_backbone_stages_equal_classifier_blocks(classifier):
    backbone = build("backbone", "efficientnet_lite0", layers=["stage5", "stage3"])
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        s5, s3 = backbone(x)
        h = classifier.bn1(classifier.conv_stem((x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                                                / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)))
        feats = []
        for block in classifier.blocks[:5]:
            h = block(h)
            feats.append(h)
    torch.testing.assert_close(s3, feats[2])
    torch.testing.assert_close(s5, feats[4])
    assert backbone.channels == [112, 40] and backbone.strides == [16, 8]


def test_mapping_checks_shapes(classifier):
    src = read_state_dict(lite0_weights_path())
    target = classifier.state_dict()
    mapped = map_lite0_state_dict(src, target)
    assert len(mapped) == 247 and set(mapped) <= set(target)
    broken = dict(src)
    broken["_blocks.3._project_conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(DataError, match="_blocks.3._project_conv.weight"):
        map_lite0_state_dict(broken, target)
    shorter = {k: v for k, v in src.items() if not k.startswith("_fc")}
    with pytest.raises(DataError, match="245 tensors"):
        map_lite0_state_dict(shorter, target)


def test_timm_named_file_loads(tmp_path, classifier):
    path = tmp_path / "lite0_timm.pth"
    torch.save(classifier.state_dict(), path)
    a = build("backbone", "efficientnet_lite0", layers=["stage2"], weights=str(path))
    b = build("backbone", "efficientnet_lite0", layers=["stage2"])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0])
