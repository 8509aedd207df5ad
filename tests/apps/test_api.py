"""The Python API as the README shows it: train, open, predict, evaluate; and runs of the previous checkpoint
layout (apps 0.11: torch's generator only, no predict manifest) still open, test, predict and resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image


def save_image(path, size=(20, 24), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_the_readme_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_image(tmp_path / "a.png", size=(30, 40))
    save_image(tmp_path / "folder" / "b.png", seed=1)
    save_image(tmp_path / "folder" / "c.jpg", size=(1, 50), seed=2)

    import apps.almrr as almrr
    from apps.common import Run
    run = almrr.train(data="demo", preset="smoke", out="runs/x")   # returns a Run
    run = Run.open("runs/x")                     # any app's run; knows its app
    preds = run.predict(["a.png", "folder/"])     # [Prediction(path, score, anomalous, anomaly_map, error)]
    metrics = run.evaluate()                      # per category and mean, as `test` reports

    assert run.app is almrr.APP and run.finished and run.path.resolve() == tmp_path / "runs" / "x"
    assert [p.path.name for p in preds] == ["a.png", "b.png", "c.jpg"]
    for p, size in zip(preds, [(30, 40), (20, 24), (1, 50)]):
        assert p.error is None and isinstance(p.score, float) and isinstance(p.anomalous, bool)
        assert p.anomaly_map.dtype == np.float32 and p.anomaly_map.shape == size
        assert p.anomalous == (p.score > run.thresholds["image"])
    report = json.loads((tmp_path / "runs" / "x" / "report" / "metrics.json").read_text())
    assert set(metrics) == {"brick", "mean"}
    assert metrics["brick"] == pytest.approx(report["categories"]["brick"], nan_ok=True)
    assert metrics["mean"] == pytest.approx(report["mean"], nan_ok=True)


def test_train_validates_its_arguments_like_the_command_line(tmp_path):
    import apps.vmpfd as vmpfd
    from ssmad.core import ConfigError

    with pytest.raises(ConfigError, match="train.lr must be a number > 0"):
        vmpfd.train(preset="smoke", overrides={"train.lr": -1}, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="data_params: expected KEY=VALUE items"):
        vmpfd.train(data="folder:/x", data_params="normal=good", out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def previous_layout(tmp_path_factory, run_app):
    """A smoke run as apps 0.11 wrote it: its checkpoints hold torch's generator alone (``torch_rng``)."""
    from apps.almrr import APP
    from apps.common.runs import save_checkpoint

    path = tmp_path_factory.mktemp("old") / "run"
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--out", str(path), "--device", "cpu", "--no-test")
    assert code == 0, err
    for name in ("checkpoint.pt", "model.pt"):
        ckpt = torch.load(path / name, weights_only=True)
        ckpt.pop("rng", None)
        ckpt["versions"] = {**ckpt["versions"], "ssmad": "0.11.0"}
        save_checkpoint(path / name, ckpt)
    return path


def test_a_run_of_the_previous_layout_opens_tests_predicts_and_resumes(previous_layout, tmp_path, run_app):
    from apps.almrr import APP
    from apps.common import Run

    run = shutil.copytree(previous_layout, tmp_path / "run")
    assert "rng" not in torch.load(run / "checkpoint.pt", weights_only=True)
    assert Run.open(run).finished
    code, _, err = run_app(APP, "test", "--run", str(run), "--device", "cpu", "--figures", "0")
    assert code == 0, err
    code, _, err = run_app(APP, "predict", "--run", str(run), str(save_image(tmp_path / "a.png")), "--out",
                           str(tmp_path / "p"), "--device", "cpu")
    assert code == 0, err
    code, _, err = run_app(APP, "train", "--resume", "--out", str(run), "--epochs", "2", "--no-test", "--device",
                           "cpu")
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in (run / "history.jsonl").read_text().splitlines()] == [1, 2]
