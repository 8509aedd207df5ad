"""apps.common.cli as a user meets it: predict's output folder and names, unreadable and hidden files, one-line
errors and notes (bad arguments, files that are not checkpoints, unfinished runs, warnings, interrupts, resuming a
finished run), quoted follow-up commands and file permissions."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.almrr.__main__ import APP
from apps.common.predict_io import collect_images, output_stems


@pytest.fixture(scope="module")
def run(tmp_path_factory, run_app):
    """A trained smoke run in a folder whose path has a space."""
    path = tmp_path_factory.mktemp("cli") / "my run"
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--out", str(path), "--device", "cpu")
    assert code == 0, err
    return path, out


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def save_image(path: Path, size=(20, 24), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_predict_refuses_earlier_results_unless_overwrite(run, tmp_path, run_app):
    run_dir, _ = run
    a, b = save_image(tmp_path / "in" / "a.png"), save_image(tmp_path / "in" / "b.png", seed=1)
    out = tmp_path / "pred"
    code, _, err = run_app(APP, "predict", "--run", str(run_dir), str(a), str(b), "--out", str(out), "--save-maps",
                           "--device", "cpu")
    assert code == 0, err
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, _, err = run_app(APP, "predict", "--run", str(run_dir), str(a), "--out", str(out), "--device", "cpu")
    assert code == 2 and len(lines(err)) == 1 and err.startswith(f"error: --out {out}: already holds") \
        and "--overwrite" in err, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before          # nothing changed
    (out / "notes.txt").write_text("mine")
    code, _, err = run_app(APP, "predict", "--run", str(run_dir), str(a), "--out", str(out), "--overwrite",
                           "--device", "cpu")
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["image"] for r in rows] == [str(a)]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png"]     # b's earlier overlay is gone
    assert not (out / "maps").exists()                                          # and the maps of the earlier run
    assert (out / "notes.txt").read_text() == "mine"                            # what predict did not write stays


def test_output_names_are_unique_and_stable(tmp_path):
    files = [Path("d/x/a.png"), Path("d/x_a.png"), Path("d/y/a.png"), Path("d/b.png"), Path("d/y/B.jpg")]
    names = output_stems(files)
    assert len({n.casefold() for n in names}) == len(files)
    assert names[1] == "x_a" and names[0] != "x_a" and names[2] == "y_a"         # x_a.png keeps its own name
    assert output_stems([files[1]]) == ["x_a"] and output_stems([files[3], Path("e/c.png")]) == ["b", "c"]
    assert output_stems(files) == names                                         # deterministic
    # folders: sorted, hidden files and folders skipped, a file given twice scored once
    save_image(tmp_path / "x" / "a.png")
    save_image(tmp_path / "x_a.png")
    (tmp_path / "x" / "._a.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    save_image(tmp_path / ".cache" / "c.png")
    found = collect_images([str(tmp_path), str(tmp_path / "x_a.png")])
    assert found == [tmp_path / "x" / "a.png", tmp_path / "x_a.png"]


def test_predict_scores_every_readable_image_and_lists_the_others(run, tmp_path, run_app):
    run_dir, _ = run
    folder = tmp_path / "in"
    save_image(folder / "0.png")
    (folder / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")               # macOS metadata: skipped
    bad = folder / "1.png"
    bad.write_bytes(save_image(tmp_path / "full.png").read_bytes()[:60])         # truncated
    save_image(folder / "2.png", seed=2)
    out = tmp_path / "pred"
    code, stdout, err = run_app(APP, "predict", "--run", str(run_dir), str(folder), "--out", str(out),
                                "--batch-size", "3", "--device", "cpu")
    assert code == 2, err
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [Path(r["image"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    assert rows[0]["score"] and rows[2]["score"] and not rows[0]["error"] and not rows[2]["error"]
    assert not rows[1]["score"] and str(bad) in rows[1]["error"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["0.png", "2.png"]
    err_lines = lines(err)
    assert len(err_lines) == 1 and str(bad) in err_lines[0], err                # one error line per error
    assert "2 images scored" in stdout and "1 could not be scored" in lines(stdout)[-1]


@pytest.mark.parametrize("argv, needle", [
    (["predict", "--run", "RUN", "IMG", "--out", "FILE"], "--out FILE: is a file, not a folder"),
    (["predict", "--run", "RUN", "IMG", "--out", "OUT", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["predict", "--run", "RUN", "IMG", "--out", "OUT", "--batch-size", "-1"], "--batch-size: expected an integer"),
    (["test", "--run", "RUN", "--batch-size", "-1"], "--batch-size: expected an integer >= 1"),
    (["test", "--run", "RUN", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["train", "--preset", "smoke", "--config", "BINARY", "--out", "OUT"], "config file BINARY: not valid TOML"),
    (["test", "--run", "RUN/config.toml"], "RUN/config.toml is not a checkpoint written by ssmad"),
    (["test", "--run", "NOWHERE"], "run folder not found: NOWHERE"),
    (["test", "--run", "RUN", "--out", "FILE"], "--out FILE: is a file, not a folder"),
])
def test_user_errors_are_one_line(argv, needle, run, tmp_path, run_app):
    run_dir, _ = run
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "BINARY").write_bytes(b"\xff\xfe[train]\n")
    img = save_image(tmp_path / "IMG.png")
    subst = {"RUN": str(run_dir), "IMG": str(img), "FILE": str(tmp_path / "FILE"), "OUT": str(tmp_path / "out"),
             "BINARY": str(tmp_path / "BINARY"), "NOWHERE": str(tmp_path / "nowhere")}

    def fill(text: str) -> str:
        return re.sub("|".join(subst), lambda m: subst[m.group()], text)

    code, out, err = run_app(APP, *[fill(a) for a in argv])
    assert code == 2, (out, err)
    errors = [line for line in lines(err) if "error:" in line]
    assert len(errors) == 1 and fill(needle) in errors[0] and "Traceback" not in err, err
    assert "weights_only" not in err


def test_a_scan_backend_for_another_device_is_one_line_before_training(tmp_path, monkeypatch, run_app):
    """It was a traceback from inside the first training step."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--set", 'pipeline.reconstructor.scan="triton"',
                             "--out", str(tmp_path / "r"), "--device", "cpu", "--no-test")
    assert code == 2 and "Traceback" not in err, err
    assert lines(err)[-1] == ("error: pipeline.reconstructor: parameter 'scan' = 'triton': the backend runs on CUDA "
                              "tensors only, and the model runs on cpu; use 'auto', which picks the best backend for "
                              "each device")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def unfinished_copy(run_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("checkpoint.pt", "config.toml"):
        shutil.copy(run_dir / name, dest / name)
    return dest


def test_unfinished_run_says_so_in_one_line(run, tmp_path, run_app):
    run_dir, _ = run
    unfinished = unfinished_copy(run_dir, tmp_path / "unfinished")
    img = save_image(tmp_path / "a.png")
    code, _, err = run_app(APP, "predict", "--run", str(unfinished), str(img), "--out", str(tmp_path / "p"),
                           "--device", "cpu")
    assert code == 0, err
    assert len(lines(err)) == 1 and err.startswith(f"note: {unfinished} did not finish training"), err
    assert "epoch 1 of 1" in err and "--threshold" in err and "Warning" not in err
    assert f"train --resume --out {unfinished}" in err
    row = next(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    assert row["decision"] == "" and row["mask"] == "" and not (tmp_path / "p" / "masks").exists()
    code, _, err = run_app(APP, "test", "--run", str(unfinished), "--figures", "0", "--device", "cpu")
    assert code == 0, err
    notes = lines(err)
    assert len(notes) == 1 and "did not finish training" in notes[0] and "Warning" not in err, err


def test_warnings_are_one_plain_line_each(monkeypatch, run_app):
    from ssmad.scoring import MetricUndefinedWarning

    def noisy(app, args, state, unfinished):
        for _ in range(3):
            warnings.warn("pixel_ap undefined: no masks", MetricUndefinedWarning, stacklevel=2)
            warnings.warn("something odd", RuntimeWarning, stacklevel=2)
        return 0

    import apps.common.cli as cli

    monkeypatch.setitem(cli.VERBS, "components", noisy)
    code, _, err = run_app(APP, "components")
    assert code == 0
    assert lines(err) == ["note: pixel_ap undefined: no masks", "warning: something odd"]


@pytest.mark.parametrize("written, needle", [
    ((), "before the first epoch completed"),            # e.g. VMPFD-AD distilling its PDN
    (("checkpoint.pt",), "the completed epochs are kept in"),
    (("checkpoint.pt", "model.pt"), "after training: the model is in"),
])
def test_interrupt_says_what_the_run_folder_holds(written, needle, tmp_path, monkeypatch, run_app):
    import apps.common.engine as engine

    def interrupted(method, config, run_dir, resume=False, data=None):
        for name in written:
            (run_dir / name).write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", interrupted)
    out = tmp_path / "r"
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--out", str(out), "--device", "cpu")
    assert code == 130 and len(lines(err)) == 1 and err.startswith("interrupted") and needle in err, err
    assert ("--resume --out" in err) == (written == ("checkpoint.pt",))


def test_resume_of_a_finished_run_changes_nothing(run, tmp_path, run_app):
    import torch

    from apps.common.runs import save_checkpoint, write_config

    run_dir, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    code, out, err = run_app(APP, "train", "--resume", "--out", str(copy), "--no-test")
    assert code == 0, err
    assert lines(out) == [f"{copy} already finished: 1 of 1 epochs trained and model.pt written; nothing to do "
                          "(raise --epochs to train longer)"]
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before
    # --epochs below the completed count: an error naming both
    ckpt = torch.load(copy / "checkpoint.pt", weights_only=True)
    ckpt["epoch"], ckpt["config"]["train"]["epochs"] = 3, 3
    save_checkpoint(copy / "checkpoint.pt", ckpt)
    write_config(copy, ckpt["config"])                                          # as training writes them
    code, out, err = run_app(APP, "train", "--resume", "--out", str(copy), "--epochs", "2", "--no-test")
    assert code == 2 and len(lines(err)) == 1 and "--epochs 2" in err and "completed 3 epochs" in err, err


def test_follow_up_commands_figures_and_permissions(run):
    run_dir, out = run
    assert f"test --run {shlex.quote(str(run_dir))}" in out and "'" in shlex.quote(str(run_dir))
    figures = [p.name for p in (run_dir / "report" / "figures").rglob("*.png")]
    assert figures and not any(name.count(".png") > 1 for name in figures)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.toml", "model.pt", "checkpoint.pt"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def train_on_normal_folder(tmp_path: Path, n: int, out: Path, run_app):
    """``train --preset smoke`` on a folder of ``n`` normal images, all of them for training (no test split)."""
    for i in range(n):
        save_image(tmp_path / "data" / f"{i:02d}.png", size=(64, 64), seed=i)
    return run_app(APP, "train", "--preset", "smoke", "--data", f"folder:{tmp_path / 'data'}", "--data-param",
                   "normal=.", "--data-param", "test_fraction=0", "--out", str(out), "--device", "cpu")


def test_a_run_without_test_images_trains_and_says_it_is_not_evaluated(tmp_path, run_app):
    """A folder of normal images only, all for training (test_fraction 0): the run trains, writes model.pt and
    exits 0 with a note (it exited 2, "the test split is empty", after a successful training)."""
    out = tmp_path / "r"
    code, stdout, err = train_on_normal_folder(tmp_path, 6, out, run_app)
    assert code == 0, err
    assert "has no test images; the run is not evaluated" in stdout and (out / "model.pt").is_file()


def test_too_few_training_images_fail_before_anything_is_written(tmp_path, run_app):
    """Two normal images, one held out: one error line before the model is prepared, and no run folder is left
    behind (it held a config.toml), so the same command runs once the data is fixed."""
    out = tmp_path / "r"
    code, _, err = train_on_normal_folder(tmp_path, 2, out, run_app)
    assert code == 2 and len(lines(err)) == 1 and "training needs at least 2 normal images" in err, err
    assert not out.exists()
