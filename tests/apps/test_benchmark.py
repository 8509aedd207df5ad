"""Every category in one command (apps/common/benchmark.py): ``train --category all`` or a list trains a run per
category under one parent folder and writes a summary whose rows are the runs' own reports; a broken category is a
failed row; ``--resume`` trains only the unfinished ones; ``test --run PARENT`` evaluates them all again;
``--devices N`` trains them in parallel processes with the same summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.almrr.__main__ import APP
from ssmad.scoring.report import read_metrics

CATEGORIES = ("bolt", "felt", "tile")


def texture(seed: int, size: int = 48) -> np.ndarray:
    """A smooth random texture (low frequencies upsampled): normal images a model can learn something from."""
    rng = np.random.default_rng(seed)
    small = rng.random((6, 6, 3))
    return (np.kron(small, np.ones((8, 8, 1)))[:size, :size] * 200 + rng.random((size, size, 3)) * 40).astype(
        np.uint8)


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_mvtec(root: Path, categories=CATEGORIES) -> Path:
    """An MVTec AD layout: per category 8 normal training images, 2 normal and 2 defective test images."""
    for ci, cat in enumerate(categories):
        d = root / cat
        for i in range(8):
            save(d / "train" / "good" / f"{i:03d}.png", texture(100 * ci + i))
        for i in range(2):
            save(d / "test" / "good" / f"{i:03d}.png", texture(100 * ci + 50 + i))
            img = texture(100 * ci + 60 + i)
            img[10:22, 14:30] = 255 * (i % 2)
            save(d / "test" / "crack" / f"{i:03d}.png", img)
            mask = np.zeros((48, 48), np.uint8)
            mask[10:22, 14:30] = 255
            save(d / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


def summary(parent: Path) -> dict:
    return json.loads((parent / "summary.json").read_text())


def own_report(run: Path) -> dict[str, float]:
    rows = read_metrics(run / "report" / "metrics.json")["categories"]
    assert len(rows) == 1
    return next(iter(rows.values()))


def same_row(a: dict, b: dict, tol: float = 1e-12) -> bool:
    """Equal metric rows (None, as JSON writes NaN, equals NaN)."""
    def num(v):
        return float("nan") if v is None else v
    return a.keys() == b.keys() and all(num(a[k]) == pytest.approx(num(b[k]), abs=tol, nan_ok=True) for k in a)


TRAIN = ("--preset", "smoke", "--device", "cpu", "--image-size", "32")


@pytest.fixture(scope="module")
def broken_then_resumed(tmp_path_factory, run_app):
    """(data root, parent folder, first exit code, first summary, output of the resume, model.pt mtimes)."""
    tmp = tmp_path_factory.mktemp("bench")
    root = make_mvtec(tmp / "mvtec")
    bad = root / "felt" / "train" / "good" / "003.png"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:40])          # a truncated image: felt's training stops before it starts
    parent = tmp / "all"
    code, out, err = run_app(APP, "train", "--data", f"mvtec:{root}", "--category", "all", "--out", str(parent),
                             *TRAIN)
    first = summary(parent)
    first["markdown"] = (parent / "summary.md").read_text()
    first["felt folder"] = sorted(p.name for p in (parent / "felt").iterdir()) if (parent / "felt").exists() else []
    mtimes = {c: (parent / c / "model.pt").stat().st_mtime_ns for c in ("bolt", "tile")}
    bad.write_bytes(good_bytes)
    code2, out2, err2 = run_app(APP, "train", "--resume", "--out", str(parent))
    return root, parent, (code, err), first, (code2, out2, err2), mtimes


def test_all_categories_train_into_one_summary_and_a_broken_one_is_a_row(broken_then_resumed):
    root, parent, (code, err), first, _, _ = broken_then_resumed
    assert code == 2, err   # a failed category makes the command fail, at the end
    assert first["failed"] == ["felt"]
    felt = first["categories"]["felt"]
    assert felt["status"] == "failed" and "003.png" in felt["error"]
    for c in ("bolt", "tile"):
        row = first["categories"][c]
        assert row["status"] == "ok"
        assert same_row(row["metrics"], own_report(parent / c))
    md = first["markdown"]
    assert "| bolt |" in md and "| tile |" in md and "| mean |" in md and "| felt | failed |" in md
    assert first["felt folder"] == []   # nothing of the failed run is left to confuse a resume


def test_resume_trains_only_the_unfinished_categories(broken_then_resumed):
    root, parent, _, _, (code, out, err), mtimes = broken_then_resumed
    assert code == 0, err
    for c, mtime in mtimes.items():   # the finished ones are left as they were
        assert (parent / c / "model.pt").stat().st_mtime_ns == mtime
    assert "felt: training" in out
    after = summary(parent)
    assert after["failed"] == []
    rows = {c: own_report(parent / c) for c in CATEGORIES}
    for c in CATEGORIES:
        assert same_row(after["categories"][c]["metrics"], rows[c])
    for key, value in after["mean"].items():   # the mean row is the mean of the reports' rows
        vals = [rows[c][key] for c in CATEGORIES if rows[c][key] == rows[c][key]]
        assert value == pytest.approx(np.mean(vals)) if vals else value is None


def test_test_of_the_parent_evaluates_every_category_again(broken_then_resumed, run_app, tmp_path):
    _, parent, _, _, _, _ = broken_then_resumed
    out = tmp_path / "again"
    code, stdout, err = run_app(APP, "test", "--run", str(parent), "--out", str(out), "--device", "cpu",
                                "--figures", "0")
    assert code == 0, err
    again = summary(out)
    before = summary(parent)
    for c in CATEGORIES:
        assert same_row(again["categories"][c]["metrics"], read_metrics(out / c / "metrics.json")["categories"][c])
        assert same_row(again["categories"][c]["metrics"], before["categories"][c]["metrics"])


def test_categories_in_parallel_give_the_sequential_summary(broken_then_resumed, run_app, tmp_path):
    root, parent, _, _, _, _ = broken_then_resumed
    code, out, err = run_app(APP, "train", "--data", f"mvtec:{root}", "--category", "tile,bolt", "--devices", "2",
                             "--out", str(tmp_path / "par"), *TRAIN)
    assert code == 0, err
    par = summary(tmp_path / "par")
    assert list(par["categories"]) == ["tile", "bolt"]
    assert (tmp_path / "par" / "logs" / "tile.log").is_file()
    seq = summary(parent)
    for c in ("tile", "bolt"):
        # other thread counts: the same model within float noise
        assert same_row(par["categories"][c]["metrics"], seq["categories"][c]["metrics"], 1e-3), c


def test_category_errors_are_one_line_before_anything_is_written(run_app, tmp_path):
    root = make_mvtec(tmp_path / "mvtec", categories=("bolt",))
    cases = [
        (["--data", f"mvtec:{root}", "--category", "bolt,nut"], "has no category 'nut'; available: bolt"),
        (["--data", f"folder:{root / 'bolt' / 'train'}", "--data-param", "normal=good", "--category", "all"],
         "has no categories"),
        (["--data", f"mvtec:{root}", "--category", "bolt", "--devices", "2"], "torchrun"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        code, _, err = run_app(APP, "train", *args, "--out", str(out), *TRAIN)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_a_benchmark_from_python_returns_its_rows(tmp_path):
    import apps.almrr as almrr

    root = make_mvtec(tmp_path / "mvtec", categories=("bolt", "tile"))
    bench = almrr.train(f"mvtec:{root}", category=["tile"], preset="smoke", image_size=32, device="cpu",
                        out=tmp_path / "py")
    assert bench.categories == ["tile"] and bench.failed == []
    assert same_row(bench.outcomes["tile"].metrics, own_report(tmp_path / "py" / "tile"))
