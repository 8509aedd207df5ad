"""Reports: metrics JSON / Markdown, heat-map figures, overlays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ssmad.core import DataError
from ssmad.scoring import METRICS
from ssmad.scoring.report import (
    colorize,
    decisions_at,
    heatmap_figure,
    overlay,
    pick_informative,
    read_metrics,
    save_heatmap_figure,
    save_worst,
    write_decisions,
    write_metrics,
)

RESULTS = {
    "carpet": {m: 0.9 + 0.01 * i for i, m in enumerate(METRICS)},
    "grid": {**{m: 0.8 for m in METRICS}, "aupro": math.nan},
}


def test_write_metrics_json_round_trip_and_markdown(tmp_path):
    json_path, md_path = write_metrics(tmp_path / "run", RESULTS, title="ALMRR on MVTec")
    assert json_path.is_file() and md_path.is_file()
    doc = json.loads(json_path.read_text())  # standard JSON: NaN written as null
    assert doc["categories"]["grid"]["aupro"] is None
    back = read_metrics(json_path)
    assert back["title"] == "ALMRR on MVTec"
    assert back["categories"]["carpet"] == RESULTS["carpet"]
    assert math.isnan(back["categories"]["grid"]["aupro"])
    assert back["mean"]["image_auroc"] == pytest.approx(0.85)
    assert back["mean"]["aupro"] == pytest.approx(RESULTS["carpet"]["aupro"])  # NaN ignored in the mean
    md = md_path.read_text().splitlines()
    assert md[0] == "# ALMRR on MVTec"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"category", "carpet", "grid", "mean"}
    assert rows["carpet"][0] == "90.0" and rows["carpet"][6] == "96.0"
    assert rows["grid"][6] == "–"
    assert rows["mean"][0] == "85.0" and len(rows["mean"]) == 7


def test_write_metrics_rejects_empty_and_non_numbers(tmp_path):
    with pytest.raises(DataError, match="no results"):
        write_metrics(tmp_path, {})
    with pytest.raises(DataError, match="carpet/image_auroc"):
        write_metrics(tmp_path, {"carpet": {"image_auroc": "high"}})
    assert not (tmp_path / "metrics.json").exists()


def test_overwrite_is_atomic_and_keeps_old_file_on_error(tmp_path):
    json_path, _ = write_metrics(tmp_path, RESULTS)
    before = json_path.read_text()
    with pytest.raises(DataError):
        write_metrics(tmp_path, {"x": {"image_ap": object()}})
    assert json_path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_colorize_and_overlay_dtypes_and_ranges():
    amap = np.linspace(0, 1, 64).reshape(8, 8)
    c = colorize(amap, 0.0, 1.0)
    assert c.dtype == np.uint8 and c.shape == (8, 8, 3)
    assert not np.array_equal(c[0, 0], c[-1, -1])
    assert np.array_equal(colorize(amap + 5, 5.0, 6.0), c)  # only the normalised value matters
    flat = colorize(np.full((4, 4), 2.0))  # vmin == vmax: no division by zero
    assert (flat == flat[0, 0]).all()
    image = np.full((8, 8, 3), 0.5)
    o = overlay(image, amap, 0.0, 1.0, alpha=0.5)
    assert o.dtype == np.uint8 and o.shape == (8, 8, 3)
    assert np.array_equal(overlay(image, amap, 0, 1, alpha=0.0), np.full((8, 8, 3), 128, np.uint8))
    assert np.array_equal(overlay((image * 255).astype(np.uint8), amap, 0, 1, alpha=1.0), c)
    chw = torch.full((3, 8, 8), 0.5)  # tensors C×H×W are accepted too
    assert np.array_equal(overlay(chw, torch.from_numpy(amap)[None], 0, 1), o)
    with pytest.raises(DataError, match="does not match"):
        overlay(image, np.zeros((4, 4)))


def test_maps_one_pixel_high_or_wide_are_maps():
    """A 1×W or H×1 map (an image one pixel high or wide) stays two-dimensional; leading batch and channel axes of
    one are dropped, and nothing else."""
    for shape in [(1, 7), (7, 1), (1, 1)]:
        amap = np.linspace(0, 1, int(np.prod(shape))).reshape(shape)
        assert colorize(amap).shape == (*shape, 3)
        assert colorize(amap[None, None]).shape == (*shape, 3)
        assert overlay(np.zeros((*shape, 3)), amap).shape == (*shape, 3)
    with pytest.raises(DataError, match="expected an H×W map"):
        colorize(np.zeros((2, 3, 4)))


def test_heatmap_figure_has_four_panels_and_colorbar():
    rng = np.random.default_rng(0)
    fig = heatmap_figure(rng.random((32, 32, 3)), rng.random((32, 32)), rng.random((32, 32)) > 0.8, "x")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["image", "anomaly map", "ground truth", "overlay"]
    assert len(fig.axes) == 5  # four panels plus the colour bar


def test_save_heatmap_figure_writes_a_decodable_png(tmp_path):
    rng = np.random.default_rng(1)
    mask = np.zeros((40, 48))
    mask[10:20, 5:15] = 1
    path = save_heatmap_figure(tmp_path / "fig.png", (rng.random((40, 48, 3)) * 255).astype(np.uint8),
                               rng.random((40, 48)), mask, title="sample")
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.width > 3 * im.height  # four panels side by side
    no_mask = save_heatmap_figure(tmp_path / "nomask.png", rng.random((40, 48)), rng.random((40, 48)))
    with Image.open(no_mask) as im:
        im.load()


def test_pick_informative_orders_missed_false_alarm_top():
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.1, 0.5, 0.8, 0.2, 0.3]
    picks = pick_informative(labels, scores, k=5)
    assert picks == [(1, "missed"), (3, "false_alarm"), (0, "top_anomaly"), (2, "missed"), (5, "false_alarm")]
    assert len(pick_informative(labels, scores, k=50)) == 6  # every image at most once


def test_save_worst_writes_k_figures(tmp_path):
    rng = np.random.default_rng(2)
    n = 6
    images = torch.rand(n, 3, 24, 24)
    maps = rng.random((n, 1, 24, 24))
    masks = np.zeros((n, 1, 24, 24))
    masks[:3, :, 5:10, 5:10] = 1
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = maps.reshape(n, -1).max(axis=1)
    names = [f"test/cat/{i:03d}.png" for i in range(n)]
    paths = save_worst(tmp_path, images, maps, masks, labels, scores, names, k=4)
    assert len(paths) == 4 and all(p.is_file() and p.suffix == ".png" for p in paths)
    assert paths[0].name.startswith("00_missed_test_cat_")
    with pytest.raises(DataError, match="5 maps for 6 names"):
        save_worst(tmp_path, images, maps[:5], masks, labels, scores, names)


def test_decisions_at_counts_what_a_threshold_flags():
    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.5, 0.2, 0.5, 0.6, 0.1, 0.3]
    d = decisions_at(labels, scores, 0.5)  # flagged only above the threshold: 0.5 itself passes (as predict)
    assert (d["defective"], d["defective_flagged"], d["normal"], d["normal_flagged"]) == (3, 1, 4, 1)
    assert d["recall"] == pytest.approx(1 / 3) and d["false_alarm_rate"] == pytest.approx(1 / 4)
    assert d["precision"] == pytest.approx(1 / 2)
    none = decisions_at([0, 0], [0.1, 0.2], 1.0)  # no defective image, nothing flagged: those shares are undefined
    assert math.isnan(none["recall"]) and math.isnan(none["precision"]) and none["false_alarm_rate"] == 0
    with pytest.raises(DataError, match="3 scores for 2 labels"):
        decisions_at([0, 1], [0.1, 0.2, 0.3], 0.5)
    with pytest.raises(DataError, match="finite"):
        decisions_at([0, 1], [0.1, 0.2], math.nan)


def test_write_decisions_json_and_markdown(tmp_path):
    rows = {"tile": decisions_at([1, 1, 0, 0], [3.0, 1.0, 2.5, 0.5], 2.0), "empty": decisions_at([0], [1.0], 2.0)}
    json_path, md_path = write_decisions(tmp_path, rows, title="decisions", note="flagged above the threshold")
    doc = json.loads(json_path.read_text())  # standard JSON: undefined shares are null
    assert doc["categories"]["tile"]["defective_flagged"] == 1 and doc["categories"]["empty"]["recall"] is None
    md = md_path.read_text()
    assert md.startswith("# decisions\n")
    assert "| tile | 2 | 1 of 2 (50.0%) | 1 of 2 (50.0%) | 1 of 2 (50.0%) |" in md
    assert "| empty | 2 | 0 of 0 | 0 of 1 (0.0%) | 0 of 0 |" in md
    assert md.rstrip().endswith("flagged above the threshold")
    with pytest.raises(DataError, match="no decisions"):
        write_decisions(tmp_path, {})


def test_save_worst_titles_say_what_the_threshold_decides(tmp_path, monkeypatch):
    import ssmad.scoring.report as report

    titles = []
    monkeypatch.setattr(report, "save_heatmap_figure", lambda path, *a: titles.append(a[3]) or path)
    labels = np.array([1, 0])
    scores = np.array([0.54221, 0.54223])
    maps = np.random.default_rng(0).random((2, 8, 8))
    save_worst(tmp_path, maps, maps, None, labels, scores, ["a", "b"], k=2, threshold=0.54222)
    # digits enough to tell the score from the threshold; a score equal to it passes
    assert titles == ["a — missed — defective image, score 0.54221 ≤ threshold 0.54222: passed",
                      "b — false alarm — normal image, score 0.54223 > threshold 0.54222: flagged"]
    titles.clear()
    save_worst(tmp_path, maps, maps, None, labels, scores, ["a", "b"], k=1)
    assert titles == ["a — missed — defective image, score 0.5422"]
