"""Metrics: cross-checked against scikit-learn and a brute-force AUPRO, with ties and chunk boundaries."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from ssmad.core import ConfigError, DataError
from ssmad.scoring import METRICS, MetricUndefinedWarning, aupro, evaluate, pixel_metrics
from ssmad.scoring.metrics import _sweep

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- independent references ------------------------------------------------------------------------------

def brute_f1max(y: np.ndarray, s: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        fp = np.sum(pred & ~y)
        fn = np.sum(~pred & y)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return float(best)


def brute_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """Loop over every threshold, label every mask with scipy (8-connectivity), overlap per region."""
    regions = []
    for i in range(masks.shape[0]):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=int))
        regions += [(i, lab == r) for r in range(1, k + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & normal).sum() / normal.sum())
        ys.append(float(np.mean([pred[i][region].mean() for i, region in regions])))
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < limit:
                y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


@st.composite
def pixel_case(draw):
    n = draw(st.integers(1, 3))
    h = draw(st.integers(2, 7))
    w = draw(st.integers(2, 7))
    levels = draw(st.sampled_from([3, 8, 1000]))  # few levels -> many ties
    maps = draw(hnp.arrays(np.int64, (n, h, w), elements=st.integers(0, levels))).astype(np.float32) / levels
    masks = draw(hnp.arrays(np.bool_, (n, h, w)))
    assume(masks.any() and not masks.all())
    return masks, maps


# ---- exactness ------------------------------------------------------------------------------------------

@SETTINGS
@given(pixel_case())
def test_pixel_metrics_match_sklearn_and_brute_force(case):
    masks, maps = case
    got = pixel_metrics(masks, maps)
    y, s = masks.ravel(), maps.ravel()
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["pixel_f1max"] == pytest.approx(brute_f1max(y, s), abs=1e-12)
    assert got["aupro"] == pytest.approx(brute_aupro(masks, maps), abs=1e-9)


@SETTINGS
@given(pixel_case(), st.integers(1, 6))
def test_sweep_is_independent_of_chunk_size(case, chunk):
    masks, maps = case
    pos = maps[masks]
    weights = np.full(pos.size, 1.0 / pos.size)
    n_neg = int((~masks).sum())
    whole = _sweep(maps, pos, weights, n_neg, 0.3)
    chunked = _sweep(maps, pos, weights, n_neg, 0.3, chunk=chunk)
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, abs=1e-12), key


@SETTINGS
@given(st.integers(2, 40), st.sampled_from([2, 5, 1000]), st.integers(0, 2**31 - 1))
def test_image_metrics_match_sklearn(n, levels, seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    assume(labels.any() and not labels.all())
    scores = rng.integers(0, levels, n) / levels
    got = evaluate(labels, scores, None, None, metrics=["image_auroc", "image_ap", "image_f1max"])
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["image_f1max"] == pytest.approx(brute_f1max(labels, scores), abs=1e-12)


def test_hand_computed_example():
    masks = np.array([[[1, 1, 0, 0]]], dtype=np.uint8)
    maps = np.array([[[0.9, 0.1, 0.5, 0.2]]])
    got = pixel_metrics(masks, maps)
    assert got["pixel_auroc"] == pytest.approx(0.5)  # positive 0.9 beats both normals, 0.1 beats none
    assert got["aupro"] == pytest.approx(0.5)  # PRO 0.5 at FPR 0, flat until FPR 0.5
    assert got["pixel_ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert got["pixel_f1max"] == pytest.approx(2 / 3)


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 10:12, 3:9] = True
    maps = np.where(masks, 1.0 + rng.random(masks.shape), rng.random(masks.shape)).astype(np.float32)
    perfect = evaluate([1, 1, 0], [3.0, 2.0, 1.0], masks, maps)
    assert all(v == pytest.approx(1.0) for v in perfect.values())
    inverted = pixel_metrics(masks, -maps)
    assert inverted["pixel_auroc"] == pytest.approx(0.0)
    assert inverted["aupro"] == pytest.approx(0.0)


def test_aupro_fpr_limit_one_is_full_area():
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, :4, :4] = True
    maps = np.random.default_rng(2).random((1, 8, 8))
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(brute_aupro(masks, maps, 1.0), abs=1e-12)
    with pytest.raises(ConfigError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)


def test_regions_are_per_image_and_8_connected():
    # diagonal touch is one region; the same pixels in two images are two regions
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[:, 1, 1] = masks[:, 2, 2] = True
    masks[0, 4, 4] = True
    maps = np.random.default_rng(3).random((2, 6, 6))
    assert aupro(masks, maps) == pytest.approx(brute_aupro(masks, maps), abs=1e-12)


def test_larger_random_input_matches_sklearn():
    rng = np.random.default_rng(4)
    masks = np.zeros((12, 48, 48), dtype=bool)
    for i in range(6):
        cy, cx = rng.integers(8, 40, 2)
        masks[i, cy - 5 : cy + 4, cx - 3 : cx + 6] = True
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    maps[:, :, :5] = 0.25  # a block of ties spanning both classes
    got = evaluate(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    pos = maps[masks]
    n_neg = int((~masks).sum())
    small_chunks = _sweep(maps, pos, None, n_neg, 0.3, chunk=997)
    assert small_chunks["pixel_auroc"] == pytest.approx(got["pixel_auroc"], abs=1e-12)


# ---- inputs ---------------------------------------------------------------------------------------------

def _small_case(seed: int = 5):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 10, 10), dtype=np.float32)
    masks[0, 2:5, 2:5] = 1
    masks[1, 6:9, 1:3] = 1
    maps = rng.random((4, 10, 10)).astype(np.float32) + 0.5 * masks
    labels = np.array([1, 1, 0, 0])
    scores = maps.reshape(4, -1).max(axis=1)
    return labels, scores, masks, maps


def test_torch_and_channel_dim_give_same_results():
    labels, scores, masks, maps = _small_case()
    ref = evaluate(labels, scores, masks, maps)
    t = evaluate(torch.from_numpy(labels), torch.from_numpy(scores), torch.from_numpy(masks)[:, None],
                 torch.from_numpy(maps)[:, None])
    assert list(ref) == list(METRICS)
    assert t == ref
    as64 = evaluate(labels, scores.astype(np.float64), masks, maps.astype(np.float64))
    assert as64 == ref


def test_lists_of_batches_or_of_single_maps_are_joined():
    labels, scores, masks, maps = _small_case()
    ref = evaluate(labels, scores, masks, maps)
    t_maps = torch.from_numpy(maps)[:, None]
    batches = evaluate([torch.tensor(labels[:3]), torch.tensor(labels[3:])], [scores[:1], scores[1:]],
                       [masks[:2, None], masks[2:, None]], [t_maps[:2], t_maps[2:]])
    assert batches == ref
    singles = evaluate(list(labels), list(torch.from_numpy(scores)), list(masks), list(maps))
    assert singles == ref
    with pytest.raises(DataError, match="do not fit together"):
        evaluate(labels, scores, masks, [maps[:2], maps[2:, :5]])


def test_masks_binarised_above_half():
    labels, scores, masks, maps = _small_case()
    soft = masks * 0.7 + 0.3 * (masks == 0) * 0.5  # 0.7 inside, 0.15 outside
    assert evaluate(labels, scores, soft, maps) == evaluate(labels, scores, masks > 0.5, maps)


def test_metric_subset_and_unknown_name():
    labels, scores, masks, maps = _small_case()
    got = evaluate(labels, scores, masks, maps, metrics=["aupro", "image_ap"])
    assert list(got) == ["aupro", "image_ap"]
    with pytest.raises(ConfigError, match="unknown metric 'pixel_aurc'.*pixel_auroc"):
        evaluate(labels, scores, masks, maps, metrics=["pixel_aurc"])


def test_registered_metric_components_agree_with_evaluate():
    import ssmad.scoring.plugin as plugin

    found = {}  # the hook called directly: no entry-point loading of the other packages
    plugin.ssmad_register(lambda kind, name, factory, **kw: found.__setitem__((kind, name), (factory, kw)))
    labels, scores, masks, maps = _small_case()
    ref = evaluate(labels, scores, masks, maps)
    for name in METRICS:
        factory, kw = found[("metric", name)]
        assert kw.get("config") is None and kw.get("summary")
        assert factory()(labels, scores, masks, maps) == ref[name]


# ---- undefined metrics ----------------------------------------------------------------------------------

def test_one_class_labels_give_nan_image_metrics_with_reason():
    _, scores, masks, maps = _small_case()
    with pytest.warns(MetricUndefinedWarning, match="all 4 labels are normal"):
        got = evaluate(np.zeros(4), scores, masks, maps)
    assert all(math.isnan(got[m]) for m in ("image_auroc", "image_ap", "image_f1max"))
    assert not math.isnan(got["pixel_auroc"])
    assert "both classes" in got.reasons["image_auroc"]


def test_missing_or_empty_masks_give_nan_pixel_metrics():
    labels, scores, _, maps = _small_case()
    with pytest.warns(MetricUndefinedWarning, match="no ground-truth masks"):
        got = evaluate(labels, scores, None, maps)
    assert all(math.isnan(got[m]) for m in ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"))
    assert got["image_auroc"] == pytest.approx(1.0)
    with pytest.warns(MetricUndefinedWarning, match="empty"):
        got = evaluate(labels, scores, np.zeros_like(maps), maps)
    assert math.isnan(got["aupro"]) and "empty" in got.reasons["aupro"]
    with pytest.warns(MetricUndefinedWarning, match="no normal pixels"):
        got = evaluate(labels, scores, np.ones_like(maps), maps)
    assert math.isnan(got["pixel_ap"])


def test_no_warning_when_everything_is_defined():
    labels, scores, masks, maps = _small_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = evaluate(labels, scores, masks, maps)
    assert got.reasons == {}


# ---- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "masks": a["masks"][:, :5]}, "does not match maps shape"),
    (lambda a: {**a, "labels": np.array([0, 1, 2, 0])}, "labels: must be 0"),
    (lambda a: {**a, "scores": a["scores"][:3]}, "3 values for 4 labels"),
    (lambda a: {**a, "masks": a["masks"][:3], "maps": a["maps"][:3]}, "3 images for 4 labels"),
    (lambda a: {**a, "maps": np.where(a["masks"] > 0, np.nan, a["maps"])}, "maps: contains NaN"),
    (lambda a: {**a, "scores": np.array([0.1, np.inf, 0.2, 0.3])}, "scores: contains NaN or infinite"),
    (lambda a: {**a, "maps": a["maps"][:, None, None]}, r"maps: expected shape \(N, H, W\)"),
])
def test_bad_inputs_raise_one_line_data_errors(change, message):
    labels, scores, masks, maps = _small_case()
    args = change({"labels": labels, "scores": scores, "masks": masks, "maps": maps})
    with pytest.raises(DataError, match=message) as info:
        evaluate(**args)
    assert "\n" not in str(info.value)
