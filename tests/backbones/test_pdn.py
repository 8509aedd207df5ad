"""EfficientAD's PDN: published output sizes, EfficientAD teacher files, our own format, freezing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ssmad.backbones import IMAGENET_MEAN, IMAGENET_STD, PDN, pdn_output_size, read_pdn_file, save_pdn_weights
from ssmad.core import ConfigError, DataError, build


def efficientad_teacher(size: str, padding: bool = False, out: int = 384) -> nn.Sequential:
    """EfficientAD's PDN written out as its nn.Sequential (the layout of its teacher_*.pth files)."""
    p = 3 if padding else 0
    q = 1 if padding else 0
    if size == "small":
        layers = [nn.Conv2d(3, 128, 4, padding=p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=q),
                  nn.Conv2d(128, 256, 4, padding=p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=q),
                  nn.Conv2d(256, 256, 3, padding=q), nn.ReLU(), nn.Conv2d(256, out, 4)]
    else:
        layers = [nn.Conv2d(3, 256, 4, padding=p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=q),
                  nn.Conv2d(256, 512, 4, padding=p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=q),
                  nn.Conv2d(512, 512, 1), nn.ReLU(), nn.Conv2d(512, 512, 3, padding=q), nn.ReLU(),
                  nn.Conv2d(512, out, 4), nn.ReLU(), nn.Conv2d(out, out, 1)]
    return nn.Sequential(*layers).eval()


def _norm(x):
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_pdn_small_published_size():
    model = build("backbone", "pdn_small")
    with torch.no_grad():
        (y,) = model(torch.rand(1, 3, 256, 256))
    assert tuple(y.shape) == (1, 384, 56, 56)
    assert model.channels == [384] and model.strides == [4]


@pytest.mark.parametrize("size", ["small", "medium"])
@pytest.mark.parametrize(("padding", "side"), [(False, 56), (True, 64)])
def test_published_sizes_by_shape_propagation(size, padding, side):
    with torch.device("meta"):  # shapes only: PDN-M at 256×256 would cost seconds on a CPU
        model = PDN(size, padding=padding)
        (y,) = model(torch.rand(2, 3, 256, 256))
    assert tuple(y.shape) == (2, 384, side, side)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 120), padding=st.booleans(), size=st.sampled_from(["small", "medium"]))
def test_output_size_formula(n, padding, size):
    want = pdn_output_size(n, padding)
    with torch.device("meta"):
        model = PDN(size, padding=padding, normalize=False)
        if n < model.min_input_size:
            assert want < 1
            with pytest.raises(ValueError, match="minimum"):
                model(torch.rand(1, 3, n, n))
            return
        (y,) = model(torch.rand(1, 3, n, n))
    assert y.shape[-1] == want >= 1


def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # by hand: 3·128·16+128 + 128·256·16+256 + 256·256·9+256 + 256·384·16+384
    assert count(PDN("small")) == count(efficientad_teacher("small")) == 2_694_144
    assert count(PDN("medium")) == count(efficientad_teacher("medium")) == 8_026_624


@pytest.mark.parametrize(("size", "side"), [("small", 64), ("medium", 40)])
def test_loads_efficientad_teacher_file(tmp_path, size, side):
    torch.manual_seed(1)
    ref = efficientad_teacher(size)
    path = tmp_path / f"teacher_{size}.pth"
    torch.save(ref.state_dict(), path)
    model = build("backbone", f"pdn_{size}", weights=str(path))
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], ref(_norm(x)))
    raw = build("backbone", f"pdn_{size}", weights=str(path), normalize=False)
    with torch.no_grad():
        torch.testing.assert_close(raw(x)[0], ref(x))
    assert not model.has_output_stats


def test_file_errors(tmp_path):
    medium = tmp_path / "teacher_medium.pth"
    torch.save(efficientad_teacher("medium").state_dict(), medium)
    with pytest.raises(DataError, match="pdn_medium, but pdn_small"):
        build("backbone", "pdn_small", weights=str(medium))
    student = tmp_path / "student_small.pth"
    torch.save(efficientad_teacher("small", out=768).state_dict(), student)
    with pytest.raises(DataError, match="768"):
        build("backbone", "pdn_small", weights=str(student))
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(DataError, match="conv1.weight"):
        build("backbone", "pdn_small", weights=str(other))
    whole = tmp_path / "teacher_final.pth"
    torch.save(efficientad_teacher("small"), whole)  # EfficientAD's train script pickles the whole module
    with pytest.raises(DataError, match="pickled"):
        build("backbone", "pdn_small", weights=str(whole))
    with pytest.raises(DataError, match="not found"):
        build("backbone", "pdn_small", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="normalize"):
        build("backbone", "pdn_small", normalise=True)


def test_own_format_round_trip_with_stats(tmp_path):
    torch.manual_seed(2)
    model = PDN("small", frozen=False)
    mean, std = torch.randn(384), torch.rand(384) + 0.5
    model.set_output_stats(mean, std)
    model.target_mean.normal_()
    path = save_pdn_weights(model, tmp_path / "pdn.pth", meta={"teacher": "x"})
    w = read_pdn_file(path)
    assert w.size == "small" and w.meta == {"teacher": "x"} and set(w.stats) == {
        "target_mean", "target_std", "output_mean", "output_std"}
    loaded = build("backbone", "pdn_small", weights=str(path))
    assert loaded.has_output_stats and loaded.meta == {"teacher": "x"}
    torch.testing.assert_close(loaded.output_mean, mean)
    torch.testing.assert_close(loaded.target_mean, model.target_mean)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        y = loaded(x)[0]
        torch.testing.assert_close(y, model(x)[0])
        torch.testing.assert_close(loaded.normalize_output(y), (y - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
    # the module's own state dict is a valid weights file too
    sd_path = tmp_path / "sd.pth"
    torch.save(loaded.state_dict(), sd_path)
    again = build("backbone", "pdn_small", weights=str(sd_path))
    torch.testing.assert_close(again.output_std, std)


def test_frozen_and_trainable():
    frozen = build("backbone", "pdn_small")
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    student = build("backbone", "pdn_small", frozen=False)
    student.train()
    assert student.training and all(p.requires_grad for p in student.parameters())
    student(torch.rand(1, 3, 36, 36))[0].sum().backward()
    assert student.get_parameter("0.weight").grad is not None
