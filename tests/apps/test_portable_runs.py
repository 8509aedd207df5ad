"""Runs that move: a run stores its paths absolute, is tested and used from any directory, scores images without
the files only training reads, and is pointed at its data's new place with ``test --data``."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apps.almrr.__main__ import APP


def _images(folder: Path, n: int, seed: int, defect: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = (rng.random((48, 48, 3)) * 60 + 100).astype(np.uint8)
        if defect:
            a[10:22, 14:26] = 255
        Image.fromarray(a).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def base(tmp_path_factory, run_app):
    """A smoke run trained from inside its folder with relative paths: data/ (good, bad), tex/ (textures), run/."""
    base = tmp_path_factory.mktemp("portable")
    _images(base / "data" / "good", 12, 0)
    _images(base / "data" / "bad", 4, 1, defect=True)
    _images(base / "tex" / "stripes", 2, 2)
    cwd = os.getcwd()
    os.chdir(base)
    try:
        code, _, err = run_app(APP, "train", "--preset", "smoke", "--data", "folder:data", "--data-param",
                               "normal=good", "--data-param", "abnormal=bad", "--set",
                               'pipeline.synth.texture_dir="tex"', "--out", "run", "--device", "cpu", "--no-test")
    finally:
        os.chdir(cwd)
    assert code == 0, err
    return base


def test_the_stored_config_names_the_data_and_textures_absolutely(base):
    config = tomllib.loads((base / "run" / "config.toml").read_text())
    assert config["data"]["spec"] == f"folder:{base / 'data'}"
    synth = next(e for e in config["pipeline"] if e["role"] == "synth")
    assert synth["texture_dir"] == str(base / "tex")
    assert json.loads((base / "run" / "split.json").read_text())["root"] == str(base / "data")


def test_test_and_predict_work_from_another_directory_and_predict_needs_no_textures(base, tmp_path, monkeypatch,
                                                                                   run_app):
    """Before apps 0.9.0 both failed from any other directory ("folder dataset root not found: data", "texture
    folder not found: tex"), and predict failed wherever the training textures were absent."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_app(APP, "test", "--run", str(base / "run"), "--out", "report", "--figures", "0",
                           "--device", "cpu")
    assert code == 0, err
    (base / "tex").rename(base / "tex-away")
    try:
        code, out, err = run_app(APP, "predict", "--run", str(base / "run"), str(base / "data" / "bad"), "--out",
                                 "pred", "--device", "cpu")
    finally:
        (base / "tex-away").rename(base / "tex")
    assert code == 0, err
    assert "4 images scored" in out


def test_a_moved_dataset_is_named_with_test_data(base, tmp_path, run_app):
    code, _, err = run_app(APP, "test", "--run", str(base / "run"), "--out", str(tmp_path / "before"), "--figures",
                           "0", "--device", "cpu")
    assert code == 0, err
    moved = tmp_path / "elsewhere"
    shutil.copytree(base / "data", moved)
    (base / "data").rename(base / "data-away")
    try:
        code, _, err = run_app(APP, "test", "--run", str(base / "run"), "--out", str(tmp_path / "lost"),
                               "--device", "cpu")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"folder dataset root not found: {base / 'data'}" in err and "--data KIND:PATH" in err
        code, _, err = run_app(APP, "test", "--run", str(base / "run"), "--out", str(tmp_path / "after"),
                               "--figures", "0", "--device", "cpu", "--data", f"folder:{moved}")
        assert code == 0, err
        assert "test split" not in err and "test images" not in err   # the split followed the data and matched
        before = json.loads((tmp_path / "before" / "metrics.json").read_text())
        after = json.loads((tmp_path / "after" / "metrics.json").read_text())
        assert before["categories"] == after["categories"]
        # the run's config is unchanged: --data applies to this evaluation only
        assert tomllib.loads((base / "run" / "config.toml").read_text())["data"]["spec"] == f"folder:{base / 'data'}"
    finally:
        (base / "data-away").rename(base / "data")


@pytest.mark.filterwarnings("ignore:.*all ground-truth masks are empty")    # this folder dataset has no masks
def test_the_diagnostic_scripts_follow_moved_data_with_data(base, tmp_path, capsys, load_script):
    """The scripts that read a run's data (padim_baseline, almrr_blend, vmpfd_branches) take --data as test does:
    before, a run whose data moved could not be examined at all."""
    script = load_script("padim_baseline")
    run = str(base / "run")
    assert script.main([run, "--channels", "8"]) == 0
    before = capsys.readouterr().out
    moved = tmp_path / "elsewhere"
    shutil.copytree(base / "data", moved)
    (base / "data").rename(base / "data-away")
    try:
        assert script.main([run, "--channels", "8"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "the same command with --data KIND:PATH" in err, err
        assert script.main([run, "--channels", "8", "--category", "x"]) == 2
        assert "give --data KIND:PATH too" in capsys.readouterr().err
        assert script.main([run, "--channels", "8", "--data", f"folder:{moved}"]) == 0
        after = capsys.readouterr()
        assert "note:" not in after.err, after.err                      # the split followed the data and matched
        assert after.out == before                                      # the same images, the same figures
    finally:
        (base / "data-away").rename(base / "data")


def test_test_data_options_need_data(base, run_app, tmp_path):
    code, _, err = run_app(APP, "test", "--run", str(base / "run"), "--out", str(tmp_path / "r"), "--category", "x")
    assert code == 2 and "give --data KIND:PATH too" in err, err


def test_vmpfd_reads_its_pdn_weights_file_only_to_train(tmp_path):
    """The PDN's weights travel in the checkpoint: scoring with a run does not need the file it started from."""
    from apps.common.config import load_config
    from apps.vmpfd.__main__ import APP as VMPFD_APP
    from apps.vmpfd.method import VMPFD
    from ssmad.core import DataError

    config = load_config(VMPFD_APP.app_dir, "smoke", None, [f'pipeline.pdn.weights="{tmp_path / "gone.pt"}"'])
    with pytest.raises(DataError, match="gone.pt"):
        VMPFD(config, torch.device("cpu"))
    scoring = VMPFD(config, torch.device("cpu"), for_training=False)
    assert scoring.modules["pdn"] is not None


def test_resume_follows_moved_data_and_refuses_a_changed_split(tmp_path, run_app):
    data = tmp_path / "data"
    _images(data / "good", 12, 0)
    _images(data / "bad", 3, 1, defect=True)
    run = tmp_path / "run"
    common = ("--device", "cpu", "--no-test")
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--data", f"folder:{data}", "--data-param",
                           "normal=good", "--data-param", "abnormal=bad", "--epochs", "1", "--out", str(run), *common)
    assert code == 0, err
    data.rename(tmp_path / "moved")
    code, _, err = run_app(APP, "train", "--resume", "--out", str(run), "--epochs", "2", "--data", "mtd:/x", *common)
    assert code == 2 and "--data may only give its new place, as folder:PATH" in err, err
    # images added to the seeded split move training images into the test split: refused, the run untouched
    _images(tmp_path / "moved" / "good", 16, 3)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    code, _, err = run_app(APP, "train", "--resume", "--out", str(run), "--epochs", "2", "--data",
                           f"folder:{tmp_path / 'moved'}", *common)
    assert code == 2 and "were training images of this run" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    for extra in sorted((tmp_path / "moved" / "good").glob("01[2-5].png")):   # the run's twelve names again
        extra.unlink()
    code, _, err = run_app(APP, "train", "--resume", "--out", str(run), "--epochs", "2", "--data",
                           f"folder:{tmp_path / 'moved'}", *common)
    assert code == 0, err
    assert "differ" not in err and "test split" not in err
    assert "resumed from" in (run / "train.log").read_text()
    assert tomllib.loads((run / "config.toml").read_text())["data"]["spec"] == f"folder:{tmp_path / 'moved'}"
    assert json.loads((run / "split.json").read_text())["root"] == str(tmp_path / "moved")


def test_a_run_scores_without_its_backbone_weights_file(tmp_path, run_app):
    """model.pt holds the frozen backbone's weights too (apps 0.10.0): before, scoring read them from their source
    again, so a run whose backbone came from a weights file (or, offline, torchvision's ImageNet download) could not
    score images anywhere that file was missing. A checkpoint written before, without them, still loads them from
    the source."""
    import torchvision

    from apps.common.runs import load_checkpoint, save_checkpoint

    weights = tmp_path / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    run, images = tmp_path / "run", tmp_path / "images"
    _images(images, 3, 5, defect=True)
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--set", f'pipeline.backbone.weights="{weights}"',
                           "--out", str(run), "--device", "cpu", "--no-test")
    assert code == 0, err
    ckpt = load_checkpoint(run)
    assert any(k.startswith("backbone.") for k in ckpt["state"]["modules"])

    def scores(out: str) -> list[str]:
        code, _, err = run_app(APP, "predict", "--run", str(run), str(images), "--out", str(tmp_path / out),
                               "--device", "cpu")
        assert code == 0, err
        return [row.split(",")[1] for row in (tmp_path / out / "predictions.csv").read_text().splitlines()[1:]]

    with_file = scores("with-file")
    weights.rename(tmp_path / "away.pt")
    assert scores("without-file") == with_file
    # a model.pt of an earlier version, without the backbone: its weights come from the file again
    ckpt["state"]["modules"] = {k: v for k, v in ckpt["state"]["modules"].items() if not k.startswith("backbone.")}
    save_checkpoint(run / "model.pt", ckpt)
    code, _, err = run_app(APP, "predict", "--run", str(run), str(images), "--out", str(tmp_path / "old"),
                           "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "resnet18.pt" in err, err
    (tmp_path / "away.pt").rename(weights)
    assert scores("old-with-file") == with_file
