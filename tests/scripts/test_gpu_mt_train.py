"""scripts/gpu_mt_train.py, ALMRR on Magnetic-tile-defect on a GPU: staging, and the run end to end (here on a CPU
with --quick: smoke preset, tiny Magnetic-tile-defect-like data, both reconstructors side by side)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("gpu_mt_train")


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A small tree in the layouts of ../shared/data: mt-defect (MT_Free + one defect class) and DTD (2 classes)."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)

    def gray():
        return (rng.random((40, 56)) * 255).astype(np.uint8)

    for i in range(14):
        _save(root / "mt" / "MT_Free" / "Imgs" / f"exp0_num_{100 + i}.jpg", gray())
        _save(root / "mt" / "MT_Free" / "Imgs" / f"exp0_num_{100 + i}.png", np.zeros((40, 56), np.uint8))
    for i in range(4):
        _save(root / "mt" / "MT_Crack" / "Imgs" / f"exp1_num_{200 + i}.jpg", gray())
        mask = np.zeros((40, 56), np.uint8)
        mask[10:20, 12:30] = 255
        _save(root / "mt" / "MT_Crack" / "Imgs" / f"exp1_num_{200 + i}.png", mask)
    for cls in ("banded", "cracked"):
        for i in range(3):
            _save(root / "dtd" / cls / f"{cls}_{i:04d}.jpg", (rng.random((300, 420, 3)) * 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def staged(script, sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage") / ".gpu-data"
    rc = script.main(["stage", "--mt", str(sources / "mt"), "--dtd", str(sources / "dtd"), "--out", str(out),
                      "--dtd-per-class", "2", "--dtd-side", "128"])
    assert rc == 0
    return out


def test_stage_copies_data_shrinks_textures_and_keeps_the_used_lite0_stages(script, staged, sources):
    assert sorted(p.name for p in (staged / "mt-defect" / "MT_Free" / "Imgs").iterdir()) == \
        sorted(p.name for p in (sources / "mt" / "MT_Free" / "Imgs").iterdir())
    textures = sorted(staged.glob("dtd/*/*.jpg"))
    assert [p.parent.name for p in textures] == ["banded", "banded", "cracked", "cracked"]
    with Image.open(textures[0]) as im:
        assert min(im.size) == 128 and max(im.size) == round(420 * 128 / 300)
    info = json.loads((staged / "stage.json").read_text())
    assert info["textures"] == 4 and info["mb"] > 0
    assert (staged / "site" / "tomli_w" / "__init__.py").is_file()

    # the truncated weights give the cpu preset's backbone the very features the full ImageNet file gives
    from ssmad.core import build

    layers = ["stage2", "stage3", "stage5"]
    full = build("backbone", "efficientnet_lite0", layers=layers, weights="imagenet").eval()
    part = build("backbone", "efficientnet_lite0", layers=layers, weights=str(staged / script.LITE0_FILE)).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = full(x), part(x)
    assert len(a) == len(b) == 3 and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    sd = torch.load(staged / script.LITE0_FILE, weights_only=True)
    assert not any(k.startswith(("blocks.5.", "blocks.6.", "conv_head", "classifier")) for k in sd)


def test_quick_run_trains_both_reconstructors_and_reports(script, staged, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    rc = script.main(["run", "--quick", "--device", "cpu", "--preset", "smoke", "--epochs", "1", "--skip-checks",
                      "--data", str(staged), "--work", str(work), "--out", str(out), "--workers", "0",
                      "--deadline-minutes", "8", "--test-minutes", "3"])
    assert rc == 0, capsys.readouterr()
    res = json.loads((out / "results.json").read_text())
    assert [r["reconstructor"] for r in res["runs"]] == ["vim", "cnn1x1"]
    for r in res["runs"]:
        assert r["status"] == "ok" and r["epochs"] == 1
        assert set(r["metrics"]) >= {"pixel_ap", "image_auroc", "aupro"}
        assert r["inference_s_per_image"] > 0
    assert (work / "almrr-cnn1x1" / "config.toml").read_text().count('"cnn1x1"') >= 1
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    for name in ("almrr-vim", "almrr-cnn1x1"):
        assert {f"{name}/train.log", f"{name}/report/metrics.json", f"{name}/console.log"} <= names
    assert not any("figures" in n or n.endswith(".pt") for n in names)
    md = (out / "results.md").read_text()
    assert "| vim | ok | 1 |" in md and "| cnn1x1 | ok | 1 |" in md


def test_errors_are_one_line(script, tmp_path, capsys):
    assert script.main(["stage", "--mt", str(tmp_path / "nope"), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --mt {tmp_path / 'nope'}: no such folder"
    assert script.main(["run", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: staged data missing: ") and "gpu_mt_train.py stage" in err and "\n" not in err
