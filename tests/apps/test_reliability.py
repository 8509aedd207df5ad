"""What a run folder and a predict folder guarantee after kills, edits and bad images (docs/run-folders.md):
predict's manifest, history and checkpoint after a kill -9, resumes that repeat the uninterrupted run, edited
config.toml files, damaged model files, per-image failures, and one line per message."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.almrr.__main__ import APP

ROOT = Path(__file__).resolve().parents[2]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def save_image(path: Path, size=(20, 24), seed=0, value=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((*size, 3), value, np.uint8) if value is not None else (
        np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def losses(run_dir: Path) -> list[dict]:
    """history.jsonl without the wall-clock seconds."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory, run_app):
    path = tmp_path_factory.mktemp("rel") / "run"
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--out", str(path), "--device", "cpu", "--no-test")
    assert code == 0, err
    return path


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory, run_app):
    """An uninterrupted 3-epoch smoke run: what a killed and resumed run must repeat."""
    path = tmp_path_factory.mktemp("rel3") / "run"
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--epochs", "3", "--out", str(path), "--device",
                           "cpu", "--no-test")
    assert code == 0, err
    return path


# -- predict's own files --------------------------------------------------------------------------------------

def test_overwrite_removes_only_the_files_predict_wrote(run, tmp_path, run_app):
    """A folder with no manifest holds no earlier results; a file predict would write over that it did not write
    stops the command before anything changes; --overwrite removes exactly what the manifest lists."""
    a, b = save_image(tmp_path / "in" / "a.png"), save_image(tmp_path / "in" / "b.png", seed=1)
    data = tmp_path / "dataset"                       # a user's folder: ground-truth masks, a picture of theirs
    save_image(data / "masks" / "a.png", value=255)
    save_image(data / "overlays" / "userpic.png", seed=3)
    before = snapshot(data)
    code, _, err = run_app(APP, "predict", "--run", str(run), str(a), "--out", str(data), "--device", "cpu")
    assert code == 2 and len(lines(err)) == 1 and "masks/a.png" in err and "did not write" in err, err
    code, _, err = run_app(APP, "predict", "--run", str(run), str(a), "--out", str(data), "--device", "cpu",
                           "--overwrite")
    assert code == 2 and "masks/a.png" in err, err
    assert snapshot(data) == before                   # the user's files, untouched by either
    code, _, err = run_app(APP, "predict", "--run", str(run), str(b), "--out", str(data), "--device", "cpu")
    assert code == 0, err                              # no clash: predicted beside the user's files
    manifest = json.loads((data / "predict-manifest.json").read_text())
    assert sorted(manifest["files"]) == ["masks/b.png", "overlays/b.png", "predictions.csv"]
    save_image(data / "overlays" / "later.png", seed=4)   # the user adds a file after predict
    code, _, err = run_app(APP, "predict", "--run", str(run), str(b), "--out", str(data), "--device", "cpu",
                           "--overwrite", "--save-maps")
    assert code == 0, err
    left = snapshot(data)
    for name, content in before.items():
        assert left[name] == content
    assert "overlays/later.png" in left and "maps/b.npy" in left
    assert sorted(json.loads((data / "predict-manifest.json").read_text())["files"]) == [
        "maps/b.distance.npy", "maps/b.npy", "masks/b.png", "overlays/b.png", "predictions.csv"]


def test_every_per_image_failure_is_a_row(run, tmp_path, run_app, monkeypatch):
    """Images 1 pixel high or wide are scored; a failure inside scoring is that image's error row, the others in
    its batch scored; an interrupted predict still lists the images it scored."""
    folder = tmp_path / "in"
    save_image(folder / "0.png")
    save_image(folder / "1.png", size=(1, 40))
    save_image(folder / "2.png", size=(40, 1))
    save_image(folder / "3.png", value=0)             # the scorer below fails on an all-black image
    save_image(folder / "4.png", seed=4)
    original = APP.method_cls.predict

    def predict(self, images):
        if bool((images.flatten(1).amax(1) == 0).any()):
            raise RuntimeError("simulated failure inside the model")
        return original(self, images)

    monkeypatch.setattr(APP.method_cls, "predict", predict)
    out = tmp_path / "pred"
    code, stdout, err = run_app(APP, "predict", "--run", str(run), str(folder), "--out", str(out), "--batch-size",
                                "5", "--device", "cpu", "--save-maps")
    assert code == 2, err
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [Path(r["image"]).name for r in rows] == [f"{i}.png" for i in range(5)]
    assert all(r["score"] and not r["error"] for i, r in enumerate(rows) if i != 3)
    assert not rows[3]["score"] and "simulated failure" in rows[3]["error"] and "3.png" in rows[3]["error"]
    assert np.load(out / "maps" / "1.npy").shape == (1, 40) and np.load(out / "maps" / "2.npy").shape == (40, 1)
    assert len(lines(err)) == 1 and "3.png" in err
    assert lines(stdout)[-1].startswith("4 images scored") and "1 could not be scored" in lines(stdout)[-1]

    calls = []

    def interrupted(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(APP.method_cls, "predict", interrupted)
    out = tmp_path / "cut"
    code, _, err = run_app(APP, "predict", "--run", str(run), str(folder), "--out", str(out), "--batch-size", "2",
                           "--device", "cpu")
    assert code == 130, err
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [Path(r["image"]).name for r in rows] == ["0.png", "1.png"]
    code, _, err = run_app(APP, "predict", "--run", str(run), str(folder), "--out", str(out), "--overwrite",
                           "--device", "cpu")                       # a rerun into the same folder is allowed
    assert code == 0, err


# -- kills, resumes ---------------------------------------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    from apps.almrr.__main__ import APP

    mode, at = sys.argv[1], int(sys.argv[2])
    if mode == "step":          # kill -9 at the start of the at-th training step of this process
        original, seen = APP.method_cls.train_step, []
        def train_step(self, batch):
            seen.append(1)
            if len(seen) == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch)
        APP.method_cls.train_step = train_step
    else:                       # kill -9 halfway through writing the checkpoint of epoch `at`
        save = torch.save
        def half_save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "optimizer" in obj and obj.get("epoch") == at:
                f.write(b"PK half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, f, *args, **kwargs)
        torch.save = half_save
    sys.exit(APP.main(sys.argv[3:]))
""")


def killed_run(tmp_path: Path, mode: str, at: int) -> Path:
    run_dir = tmp_path / f"killed-{mode}"
    argv = ["train", "--preset", "smoke", "--epochs", "3", "--out", str(run_dir), "--device", "cpu", "--no-test"]
    proc = subprocess.run([sys.executable, "-c", KILLER, mode, str(at), *argv], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, proc.stderr
    return run_dir


@pytest.mark.parametrize("mode, at, epochs_kept", [("step", 6, 2), ("checkpoint", 2, 1)],
                         ids=["mid-epoch", "while-the-checkpoint-is-written"])
def test_a_killed_run_resumes_into_the_uninterrupted_one(mode, at, epochs_kept, three_epochs, tmp_path, run_app):
    """kill -9 in the middle of epoch 3 (smoke: 2 steps an epoch), or while epoch 2's checkpoint is being written:
    history.jsonl agrees with the checkpoint, the resumed run removes the temporary file and its history equals
    the uninterrupted run's exactly (every generator is restored)."""
    import torch

    run_dir = killed_run(tmp_path, mode, at)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == epochs_kept
    assert losses(run_dir) == losses(three_epochs)[:epochs_kept]           # no duplicated or missing epoch
    stale = list(run_dir.glob(".checkpoint.pt.*.tmp"))
    assert bool(stale) == (mode == "checkpoint")
    code, _, err = run_app(APP, "train", "--resume", "--out", str(run_dir), "--no-test", "--device", "cpu")
    assert code == 0, err
    assert not list(run_dir.glob(".*.tmp"))
    if stale:
        assert "removed 1 temporary file" in err
    assert losses(run_dir) == losses(three_epochs)
    done = torch.load(run_dir / "model.pt", weights_only=True)["state"]["modules"]
    expected = torch.load(three_epochs / "model.pt", weights_only=True)["state"]["modules"]
    assert all(torch.equal(done[k], expected[k]) for k in expected)


def test_a_resume_rewrites_history_from_the_checkpoint(run, tmp_path, run_app):
    """A history.jsonl with a record the checkpoint lacks (a kill between the two writes of an epoch, or the
    duplicated epoch of earlier releases) is rewritten from the checkpoint on resume."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "model.pt").unlink()
    first = (copy / "history.jsonl").read_text()
    (copy / "history.jsonl").write_text(first + first)
    code, _, err = run_app(APP, "train", "--resume", "--out", str(copy), "--no-test", "--device", "cpu")
    assert code == 0, err
    assert (copy / "history.jsonl").read_text() == first


def test_resume_of_a_finished_run_checks_its_model(run, tmp_path, run_app):
    """A damaged model.pt is reported and written again from the last checkpoint, not called finished."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    good = (copy / "model.pt").read_bytes()
    (copy / "model.pt").write_bytes(good[: len(good) // 3])
    code, out, err = run_app(APP, "train", "--resume", "--out", str(copy), "--no-test", "--device", "cpu")
    assert code == 0, err
    assert "already finished" not in out and "model.pt" in err and "writing it again" in err, err
    code, _, err = run_app(APP, "test", "--run", str(copy), "--device", "cpu", "--figures", "0")
    assert code == 0, err


# -- config.toml --------------------------------------------------------------------------------------------

def test_an_edited_config_toml_is_refused_or_used_never_reverted(run, tmp_path, run_app):
    """An edit the checkpoint cannot honour (the pipeline) stops test, predict and resume with one line naming
    the key, the file unchanged; an edit of a setting a resume may change (train.epochs) is what the resume uses."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cfg = copy / "config.toml"
    text = cfg.read_text()
    assert 'name = "vim"' in text
    cfg.write_text(text.replace('name = "vim"', 'name = "nope"'))
    edited = cfg.read_bytes()
    img = save_image(tmp_path / "a.png")
    for argv in (["test", "--run", str(copy)], ["predict", "--run", str(copy), str(img), "--out", str(tmp_path / "p")],
                 ["train", "--resume", "--out", str(copy), "--epochs", "2", "--no-test"]):
        code, _, err = run_app(APP, *argv, "--device", "cpu")
        assert code == 2 and len(lines(err)) == 1, (argv, err)
        assert "pipeline.reconstructor.name is 'nope' there, 'vim' in the checkpoint" in err, err
        assert cfg.read_bytes() == edited
    assert not (tmp_path / "p").exists()
    cfg.write_text(text.replace("epochs = 1", "epochs = 2"))
    code, _, err = run_app(APP, "train", "--resume", "--out", str(copy), "--no-test", "--device", "cpu")
    assert code == 0 and "train.epochs = 2 from" in err, err
    assert [r["epoch"] for r in losses(copy)] == [1, 2] and "epochs = 2" in cfg.read_text()


# -- messages -------------------------------------------------------------------------------------------------

def test_a_plain_pickle_as_model_is_one_error_line(tmp_path, run_app):
    import pickle

    (tmp_path / "model.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    code, _, err = run_app(APP, "test", "--run", str(tmp_path))
    assert code == 2 and lines(err) == [f"error: {tmp_path / 'model.pt'} is not a checkpoint written by ssmad"], err


def test_an_unknown_component_names_its_key_and_the_closest_names(tmp_path, run_app):
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--set", "pipeline.reconstructor.name=vimm", "--out",
                           str(tmp_path / "x"))
    assert code == 2 and len(lines(err)) == 1, err
    assert err.startswith("error: pipeline.reconstructor.name: unknown reconstructor 'vimm'; available: vim, "), err
    assert not (tmp_path / "x").exists()


def test_the_eta_is_to_the_end_the_run_reaches(tmp_path, run_app):
    from apps.common.engine import eta

    assert eta(14 * 3600, 50 * 60, {"max_minutes": 50}, 100) == "ETA 50:00 (train.max_minutes = 50)"
    assert eta(600, 50 * 60, {"max_minutes": 50}, 100) == "ETA 10:00 (epoch 100)"
    assert eta(14 * 3600, -1, {"max_minutes": 0}, 100) == "ETA 14:00:00 (epoch 100)"
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--epochs", "10000", "--set", "train.max_minutes=0.03",
                             "--set", "train.log_every_s=0", "--out", str(tmp_path / "r"), "--no-test", "--device",
                             "cpu")
    assert code == 0, err
    progress = [line for line in lines(out) if "| ETA" in line]
    assert progress and all(line.endswith("(train.max_minutes = 0.03)") for line in progress), progress[:3]
