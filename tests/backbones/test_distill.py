"""python -m ssmad.backbones distill: the loss falls on tiny data, the file loads as a PDN, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssmad.backbones import make_projection, read_image
from ssmad.backbones.__main__ import main
from ssmad.core import build

# PDN input 16 px (4×4 output grid), teacher input 32 px: a PDN-S step costs ~0.3 GFLOP, not ~8 as at 32 px
FAST = ["--teacher", "efficientnet_lite0", "--image-size", "16", "--batch-size", "3", "--lr", "5e-4",
        "--grayscale-p", "0", "--log-every", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six generated 48×48 images: RGB stripes and gradients, one grayscale, one RGBA, one 16-bit, in subfolders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    for i in range(6):
        a = np.stack([np.sin(6 * xx * (i + 1)) * 0.5 + 0.5, yy, (xx * yy * (i + 1)) % 1], -1)
        a = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
        folder = root / ("a" if i < 3 else "b")
        folder.mkdir(exist_ok=True)
        if i == 3:
            Image.fromarray((a[..., 0] * 255).astype(np.uint8), mode="L").save(folder / f"img{i}.png")
        elif i == 4:
            rgba = np.concatenate([a, np.ones_like(a[..., :1])], -1)
            Image.fromarray((rgba * 255).astype(np.uint8), mode="RGBA").save(folder / f"img{i}.png")
        elif i == 5:
            Image.fromarray((a[..., 1] * 65535).astype(np.uint16)).save(folder / f"img{i}.png")
        else:
            Image.fromarray((a * 255).astype(np.uint8)).save(folder / f"img{i}.jpg", quality=95)
    (root / "notes.txt").write_text("not an image")
    return root


def test_loss_falls_and_file_loads_as_pdn(images, tmp_path, capsys):
    out = tmp_path / "pdn.pth"
    rc = main(["distill", "--images", str(images), "--out", str(out), "--steps", "10", "--save-every", "4", *FAST])
    assert rc == 0
    log = capsys.readouterr().out
    assert "step 10/10" in log and "ETA" in log and "loss" in log
    ckpt = torch.load(out, weights_only=True)
    losses = [loss for _, loss in ckpt["train"]["history"]]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    assert ckpt["train"]["complete"] and ckpt["meta"]["layers"] == ["stage3", "stage5"]
    assert ckpt["meta"]["n_images"] == 6 and tuple(ckpt["projection"].shape) == (384, 40 + 112)
    pdn = build("backbone", "pdn_small", weights=str(out))
    assert pdn.has_output_stats and pdn.meta["teacher"] == "efficientnet_lite0"
    torch.testing.assert_close(pdn.target_mean, ckpt["target_mean"])
    with torch.no_grad():
        (y,) = pdn(torch.rand(1, 3, 64, 64))
    assert tuple(y.shape) == (1, 384, 8, 8) and torch.isfinite(y).all()
    assert ckpt["meta"]["grid"] == 4 and ckpt["meta"]["teacher_size"] == 32


def test_resume_continues_like_an_uninterrupted_run(images, tmp_path):
    straight, split = tmp_path / "straight.pth", tmp_path / "split.pth"
    args = ["--images", str(images), *FAST]
    assert main(["distill", "--out", str(straight), "--steps", "3", *args]) == 0
    assert main(["distill", "--out", str(split), "--steps", "1", *args]) == 0
    assert main(["distill", "--out", str(split), "--steps", "3", "--resume", *args]) == 0
    a, b = torch.load(straight, weights_only=True), torch.load(split, weights_only=True)
    assert b["train"]["step"] == 3 and [s for s, _ in b["train"]["history"]] == [1, 2, 3]
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-4, atol=1e-5)


def test_resume_refuses_a_changed_setting(images, tmp_path, capsys):
    out = tmp_path / "pdn.pth"
    assert main(["distill", "--images", str(images), "--out", str(out), "--steps", "1", *FAST]) == 0
    capsys.readouterr()
    rc = main(["distill", "--images", str(images), "--out", str(out), "--steps", "2", "--resume", *FAST,
               "--image-size", "40"])
    err = capsys.readouterr().err
    assert rc == 2 and "--image-size 40 differs" in err
    rc = main(["distill", "--images", str(images), "--out", str(out), "--steps", "2", *FAST])
    assert rc == 2 and "--resume" in capsys.readouterr().err  # never silently overwritten


def _one_line_error(capsys, argv, *needles) -> None:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_bad_input_exits_2_with_one_line(images, tmp_path, capsys):
    out = str(tmp_path / "x.pth")
    missing = tmp_path / "no_such_dir"
    _one_line_error(capsys, ["distill", "--images", str(missing), "--out", out, *FAST], str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    _one_line_error(capsys, ["distill", "--images", str(empty), "--out", out, *FAST], "no images", str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in images.rglob("*.png"):
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    _one_line_error(capsys, ["distill", "--images", str(broken), "--out", out, *FAST], "corrupt.png")
    assert not Path(out).exists()
    _one_line_error(capsys, ["distill", "--images", str(images), "--out", out, *FAST[2:], "--teacher", "resnet5"],
                    "resnet50")
    _one_line_error(capsys, ["distill", "--images", str(images), "--out", out, *FAST, "--layers", "stage9"],
                    "stage9", "stage1, stage2")


def test_read_image_modes(images):
    for path in images.rglob("*"):
        if path.suffix in (".png", ".jpg"):
            img = read_image(path)
            assert img.shape == (3, 48, 48) and img.dtype == torch.float32
            assert 0 <= float(img.min()) and float(img.max()) <= 1
    gray16 = read_image(next(images.rglob("img5.png")))
    assert float(gray16.max()) > 0.5 and torch.equal(gray16[0], gray16[2])  # 16-bit scaled, not clipped to 1


@pytest.mark.parametrize(("cin", "cout"), [(152, 384), (700, 384), (384, 384)])
def test_projection_is_orthonormal(cin, cout):
    p = make_projection(cin, cout, seed=3)
    assert tuple(p.shape) == (cout, cin)
    gram = p @ p.T if cin >= cout else p.T @ p
    torch.testing.assert_close(gram, torch.eye(min(cin, cout)), atol=1e-5, rtol=0)
    torch.testing.assert_close(p, make_projection(cin, cout, seed=3))


def test_cached_targets_train_as_the_teacher_every_step(images, tmp_path):
    """The teacher's targets computed once and kept train the PDN as targets computed at every step do;
    several folders are one image set."""
    halves = [tmp_path / "a", tmp_path / "b"]
    for k, p in enumerate(sorted(images.rglob("*.png"))):
        dest = halves[k % 2] / p.name
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(p.read_bytes())
    args = ["--images", *map(str, halves), "--steps", "4", "--precision", "fp32", *FAST]
    assert main(["distill", "--out", str(tmp_path / "cached.pth"), *args]) == 0
    assert main(["distill", "--out", str(tmp_path / "fresh.pth"), "--cache-gib", "0", *args]) == 0
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("cached.pth", "fresh.pth"))
    assert a["meta"]["n_images"] == b["meta"]["n_images"] == len(list(images.rglob("*.png")))
    # every step's loss: a target taken from another image's cache entry would change it far beyond float noise
    losses = [[loss for _, loss in x["train"]["history"]] for x in (a, b)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-3)
