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
    heatmap_figure,
    overlay,
    pick_informative,
    read_metrics,
    save_heatmap_figure,
    save_worst,
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
