"""torchvision / timm backbones: shapes, channels, strides, freezing, layer names and weight loading."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.models as tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.backbones import IMAGENET_MEAN, IMAGENET_STD, ResNetBackbone, hub_checkpoint_dir
from ssmad.core import ConfigError, DataError, build

ALL_LAYERS = {
    "resnet18": (("layer1", "layer2", "layer3", "layer4"), [64, 128, 256, 512], [4, 8, 16, 32]),
    "resnet34": (("layer1", "layer2", "layer3", "layer4"), [64, 128, 256, 512], [4, 8, 16, 32]),
    "resnet50": (("layer1", "layer2", "layer3", "layer4"), [256, 512, 1024, 2048], [4, 8, 16, 32]),
    "wide_resnet50_2": (("layer1", "layer2", "layer3", "layer4"), [256, 512, 1024, 2048], [4, 8, 16, 32]),
    "vgg19": (("block1", "pool1", "block2", "pool2", "block3", "pool3", "block4", "pool4", "block5", "pool5"),
              [64, 64, 128, 128, 256, 256, 512, 512, 512, 512], [1, 2, 2, 4, 4, 8, 8, 16, 16, 32]),
    "efficientnet_lite0": (tuple(f"stage{i}" for i in range(1, 8)), [16, 24, 40, 80, 112, 192, 320],
                           [2, 4, 8, 16, 16, 32, 32]),
}
ROUNDING = {"vgg19": math.floor}  # max-pools floor; the strided convolutions of the others round up


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module", params=list(ALL_LAYERS))
def full_backbone(request):
    name = request.param
    layers = ALL_LAYERS[name][0]
    return name, build("backbone", name, layers=list(layers), weights=None)


def test_channels_strides_and_map_sizes(full_backbone):
    name, model = full_backbone
    layers, channels, strides = ALL_LAYERS[name]
    assert model.channels == channels and model.strides == strides
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        maps = model(x)
    assert len(maps) == len(layers)
    rnd = ROUNDING.get(name, math.ceil)
    for m, c, s in zip(maps, channels, strides, strict=True):
        assert tuple(m.shape) == (1, c, rnd(64 / s), rnd(64 / s))
        assert torch.isfinite(m).all()


def test_frozen_stays_eval(full_backbone):
    _, model = full_backbone
    assert not model.training
    model.train()
    assert not model.training and not any(mod.training for mod in model.modules())
    model.train(True)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_unknown_layer_lists_allowed_names():
    with pytest.raises(ConfigError) as err:
        build("backbone", "resnet18", layers=["layer5"], weights=None)
    msg = str(err.value)
    assert "layer5" in msg and "layer1, layer2, layer3, layer4" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="block1, pool1, block2"):
        build("backbone", "vgg19", layers=["relu3_4"], weights=None)
    with pytest.raises(ConfigError, match="stage1, stage2, stage3, stage4, stage5, stage6, stage7"):
        build("backbone", "efficientnet_lite0", layers=["blocks.2"], weights=None)
    with pytest.raises(ConfigError, match="twice"):
        ResNetBackbone("resnet18", layers=("layer2", "layer2"), weights=None)
    with pytest.raises(ConfigError, match="layer1, layer2"):  # direct construction checks too
        ResNetBackbone("resnet18", layers=("conv1",), weights=None)


def test_order_of_layers_and_truncation():
    model = build("backbone", "resnet18", layers=["layer2", "layer1"], weights=None)
    assert model.channels == [128, 64] and model.strides == [8, 4]
    assert list(model.stages) == ["layer1", "layer2"]  # deeper stages are not even built into the module
    with torch.no_grad():
        a, b = model(torch.rand(1, 3, 64, 64))
    assert a.shape[1] == 128 and b.shape[1] == 64


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    ref = tvm.resnet18(weights=None).eval()
    path = tmp_path_factory.mktemp("w") / "resnet18-f37072fd.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


def _reference_maps(ref, x):
    x = _normalise(x)
    x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
    out = []
    for layer in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
        x = layer(x)
        out.append(x)
    return out


def test_local_weights_file_matches_torchvision(resnet18_file):
    ref, path = resnet18_file
    model = build("backbone", "resnet18", layers=["layer1", "layer2", "layer3", "layer4"], weights=str(path))
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        got, want = model(x), _reference_maps(ref, x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_weights_file_with_prefix_and_wrapper(resnet18_file, tmp_path):
    ref, _ = resnet18_file
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    model = build("backbone", "resnet18", layers=["layer1"], weights=str(path))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], _reference_maps(ref, x)[0])


def test_headless_file_is_enough_for_early_layers(resnet18_file, tmp_path):
    ref, _ = resnet18_file
    path = tmp_path / "headless.pth"
    torch.save({k: v for k, v in ref.state_dict().items() if not k.startswith(("fc.", "layer4."))}, path)
    build("backbone", "resnet18", layers=["layer3"], weights=str(path))
    with pytest.raises(DataError, match="missing.*layer4"):
        build("backbone", "resnet18", layers=["layer4"], weights=str(path))


def test_weights_mismatch_errors(resnet18_file, tmp_path):
    _, path = resnet18_file
    with pytest.raises(DataError, match="wrong shape"):  # resnet18 weights into resnet34 fit by name, not shape
        build("backbone", "resnet50", layers=["layer1"], weights=str(path))
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder_conv.weight": torch.zeros(3)}, foreign)
    with pytest.raises(DataError, match="does not have"):
        build("backbone", "resnet18", layers=["layer1"], weights=str(foreign))
    with pytest.raises(DataError, match="not found"):
        build("backbone", "resnet18", layers=["layer1"], weights=str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(DataError, match="garbage.pth"):
        build("backbone", "resnet18", layers=["layer1"], weights=str(garbage))
    pickled = tmp_path / "pickled.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: refused by weights_only loading
    with pytest.raises(DataError, match="pickled"):
        build("backbone", "resnet18", layers=["layer1"], weights=str(pickled))
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build("backbone", "resnet18", layers=["layer1"], weights="IMAGENET1K_V2")


def test_imagenet_offline_error_names_file_and_folder(no_download):
    with pytest.raises(DataError) as err:
        build("backbone", "resnet18", layers=["layer1"])
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg
    assert str(hub_checkpoint_dir()) in msg and hub_checkpoint_dir().parts[-3:] == ("torch_home", "hub",
                                                                                   "checkpoints")
    assert "weights=PATH" in msg and "\n" not in msg
    assert no_download == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_imagenet_file_placed_in_cache_loads_offline(no_download, resnet18_file):
    ref, path = resnet18_file
    folder = hub_checkpoint_dir()
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    model = build("backbone", "resnet18", layers=["layer2"])  # weights="imagenet" is the default
    assert no_download == []  # never tried to download
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], _reference_maps(ref, x)[1])


def test_enum_member_names_its_file(no_download):
    with pytest.raises(DataError, match="resnet50-11ad3fa6.pth"):
        build("backbone", "resnet50", layers=["layer1"], weights="IMAGENET1K_V2")


def test_the_keyword_none_is_random_init_in_any_case(no_download):
    """"none" (configuration files have no null) means weights=None for every backbone; it read as a file name."""
    for name, layers in (("resnet18", ["layer1"]), ("vgg19", ["block1"]), ("efficientnet_lite0", ["stage1"])):
        for value in ("none", "None"):
            torch.manual_seed(0)
            a = build("backbone", name, layers=layers, weights=value)
            torch.manual_seed(0)
            b = build("backbone", name, layers=layers, weights=None)
            assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert build("backbone", "pdn_small", weights="none") is not None
    assert no_download == []


def test_input_checks():
    model = build("backbone", "resnet18", layers=["layer1"], weights=None)
    with pytest.raises(ValueError, match="B×3×H×W"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.fixture(scope="module")
def small_models():
    return {name: build("backbone", name, layers=list(ALL_LAYERS[name][0]), weights=None)
            for name in ("resnet18", "efficientnet_lite0")}


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(["resnet18", "efficientnet_lite0"]), h=st.integers(9, 48), w=st.integers(9, 48))
def test_any_input_size_map_is_ceil_of_size_over_stride(small_models, name, h, w):
    model = small_models[name]
    with torch.no_grad():
        maps = model(torch.rand(1, 3, h, w))
    for m, s in zip(maps, model.strides, strict=True):
        assert tuple(m.shape[-2:]) == (math.ceil(h / s), math.ceil(w / s))
