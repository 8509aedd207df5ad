"""Image- and pixel-level anomaly detection metrics: AUROC, AP, F1-max and AUPRO (FPR <= 0.3).

Image metrics use scikit-learn (``roc_auc_score``, ``average_precision_score``, ``precision_recall_curve``):
a few hundred scores are nothing for it. Pixel metrics are computed here, exactly, by one sweep over all
pixels sorted by score: hundreds of 256x256 maps are tens of millions of pixels, for which scikit-learn's
curves (several float64 copies of every pixel plus an argsort) cost gigabytes and many seconds. The sweep
reproduces scikit-learn's definitions:

- thresholds are the distinct scores; a pixel is predicted anomalous when its score is >= the threshold,
  so tied scores enter the curves together (a diagonal ROC segment);
- AUROC is the trapezoidal area under (FPR, TPR) starting at (0, 0), as ``roc_auc_score``;
- AP is the step sum ``sum_k (R_k - R_{k-1}) P_k`` without interpolation, as ``average_precision_score``;
- F1-max is the maximum over thresholds of ``2PR / (P + R) = 2TP / (TP + FP + #positives)``;
- AUPRO: per-region overlap (connected components of each ground-truth mask, 8-connectivity, with
  ``skimage.measure.label``) averaged over all regions of all images, against the FPR over all normal pixels;
  the area under that curve for FPR in [0, 0.3] (trapezoid rule, linearly interpolated at FPR = 0.3 exactly)
  divided by 0.3. Each anomalous pixel adds ``1 / (region size * number of regions)`` to the PRO when the
  threshold passes it, so the whole curve is a cumulative sum over the sorted pixels.

Only the scores are sorted (``numpy.sort``, much faster than an argsort of tens of millions of pixels); the
anomalous pixels, usually a few percent, are sorted on their own and matched to the thresholds chunk by chunk.
Counts are integers (AUROC is exact integer arithmetic before the final division); PRO sums are float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ssmad.core import ConfigError, DataError, suggest

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
METRICS = IMAGE_METRICS + PIXEL_METRICS
AUPRO_FPR_LIMIT = 0.3
_CHUNK = 1 << 18


class MetricUndefinedWarning(UserWarning):
    """A metric is NaN because the inputs cannot define it (one class only, no masks...)."""


class MetricResults(dict):
    """``evaluate``'s result: metric name -> float (NaN where undefined); ``reasons`` says why for each NaN."""

    def __init__(self, values: Mapping[str, float], reasons: Mapping[str, str] | None = None) -> None:
        super().__init__(values)
        self.reasons: dict[str, str] = dict(reasons or {})


# ---- input conversion ------------------------------------------------------------------------------------

def to_numpy(x: Any, what: str) -> np.ndarray:
    """A numpy view/copy of a numpy array, torch tensor (any device, half precision widened) or sequence."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch here
        x = x.detach()
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: cannot be read as an array ({type(x).__name__}): {exc}") from None


def _join(x: list | tuple, what: str, item_ndim: int) -> np.ndarray:
    """Batches collected in a list: stacked when each entry is one item (``ndim == item_ndim``), else
    concatenated along the first axis."""
    parts = [to_numpy(e, f"{what}[{i}]") for i, e in enumerate(x)]
    try:
        if all(p.ndim == item_ndim for p in parts):
            return np.stack(parts)
        return np.concatenate([p.reshape(1) if p.ndim == 0 else p for p in parts])
    except ValueError as exc:
        raise DataError(f"{what}: the entries of the list do not fit together: {exc}") from None


def _batches(x: Any) -> bool:
    return isinstance(x, list | tuple) and len(x) > 0 and any(hasattr(e, "shape") for e in x)


def _vector(x: Any, what: str) -> np.ndarray:
    arr = _join(x, what, 0) if _batches(x) else to_numpy(x, what)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise DataError(f"{what}: expected shape (N,), got {tuple(arr.shape)}")
    return arr


def _labels(labels: Any) -> np.ndarray:
    y = _vector(labels, "labels")
    if y.dtype == bool:
        return y
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        bad = [v for v in np.unique(y)[:5].tolist() if v not in (0, 1)]
        raise DataError(f"labels: must be 0 (normal) or 1 (anomalous), got values such as {bad}")
    return y.astype(bool)


def _finite_float(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what}: expected numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
    else:
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DataError(f"{what}: contains NaN or infinite values")
    return arr


def _stack(x: Any, what: str) -> np.ndarray:
    """(N, H, W) from (N, H, W), (N, 1, H, W), a single (H, W), or a list of such batches or maps."""
    arr = _join(x, what, 2) if _batches(x) else to_numpy(x, what)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"{what}: expected shape (N, H, W) or (N, 1, H, W), got {tuple(arr.shape)}")
    return arr


def binarize_masks(masks: Any) -> np.ndarray:
    """Ground-truth masks as booleans (N, H, W): a pixel is anomalous when its value is > 0.5."""
    arr = _stack(masks, "masks")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "biuf":
        raise DataError(f"masks: expected numbers or booleans, got dtype {arr.dtype}")
    return arr > 0.5


# ---- image metrics (scikit-learn) ----------------------------------------------------------------------

def _image_metrics(y: np.ndarray, s: np.ndarray, wanted: set[str]) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    out: dict[str, float] = {}
    if "image_auroc" in wanted:
        out["image_auroc"] = float(roc_auc_score(y, s))
    if "image_ap" in wanted:
        out["image_ap"] = float(average_precision_score(y, s))
    if "image_f1max" in wanted:
        precision, recall, _ = precision_recall_curve(y, s)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        out["image_f1max"] = float(f1.max())
    return out


# ---- exact pixel metrics by one sorted sweep -------------------------------------------------------------

def _sweep(values: np.ndarray, pos_values: np.ndarray, pos_weights: np.ndarray | None, n_neg: int,
           fpr_limit: float, chunk: int = _CHUNK) -> dict[str, float]:
    """AUROC, AP, F1-max (and AUPRO when ``pos_weights`` is given) at every distinct threshold.

    ``values``: every pixel's score (flat); ``pos_values``: the scores of the anomalous pixels, ``pos_weights``
    their AUPRO weights. All pixels are sorted once (values only, no argsort); the anomalous pixels are sorted
    on their own (usually a few percent of the pixels) and assigned to the thresholds chunk by chunk, so the
    extra memory is one sorted copy of the scores plus the anomalous pixels.
    """
    n = values.size
    n_pos = pos_values.size
    desc = np.sort(values.reshape(-1))[::-1]
    if pos_weights is None:
        pos_sorted = np.sort(pos_values)
        w_sorted = None
    else:
        order = np.argsort(pos_values)
        pos_sorted = pos_values[order]
        w_sorted = pos_weights[order]
    auc2 = 0  # twice the ROC area times n_pos * n_neg: exact integer arithmetic
    ap = 0.0
    f1 = 0.0
    pro_area = 0.0
    pro_done = w_sorted is None
    prev_tp, prev_fp, prev_pro = 0, 0, 0.0  # the last curve point (threshold) emitted
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        m = b - a
        d = desc[a : min(b + 1, n)]
        end = np.empty(m, dtype=bool)  # position i closes a group of tied scores
        np.not_equal(d[: m - 1], d[1:m], out=end[: m - 1])
        end[m - 1] = True if b == n else bool(d[m - 1] != d[m])
        idx = np.flatnonzero(end)
        if idx.size == 0:
            continue
        th = d[idx]  # this chunk's thresholds, descending
        # anomalous pixels whose score is one of these thresholds: th[-1] <= v <= th[0]
        lo = int(np.searchsorted(pos_sorted, th[-1], side="left"))
        hi = int(np.searchsorted(pos_sorted, th[0], side="right"))
        group = (th.size - 1) - np.searchsorted(th[::-1], pos_sorted[lo:hi], side="left")
        tp = np.cumsum(np.bincount(group, minlength=th.size), dtype=np.int64)
        tp += prev_tp
        fp = (idx + (a + 1)) - tp
        tp_prev = np.concatenate(([prev_tp], tp[:-1]))
        fp_prev = np.concatenate(([prev_fp], fp[:-1]))
        auc2 += int(np.sum((fp - fp_prev) * (tp + tp_prev)))
        ap += float(np.sum((tp - tp_prev) * (tp / (tp + fp))))
        f1 = max(f1, float(np.max(2.0 * tp / (tp + fp + n_pos))))
        if w_sorted is not None:
            pro = np.cumsum(np.bincount(group, weights=w_sorted[lo:hi], minlength=th.size), dtype=np.float64)
            pro += prev_pro
            if not pro_done:
                x = np.concatenate(([prev_fp / n_neg], fp / n_neg))
                y = np.concatenate(([prev_pro], pro))
                beyond = np.flatnonzero(x[1:] > fpr_limit)
                stop = beyond[0] if beyond.size else x.size - 1
                pro_area += float(np.sum((x[1 : stop + 1] - x[:stop]) * (y[1 : stop + 1] + y[:stop]))) / 2
                if beyond.size:
                    x0, x1, y0, y1 = x[stop], x[stop + 1], y[stop], y[stop + 1]
                    y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                    pro_area += (fpr_limit - x0) * (y0 + y_lim) / 2
                    pro_done = True
            prev_pro = float(pro[-1])
        prev_tp, prev_fp = int(tp[-1]), int(fp[-1])
    out = {"pixel_auroc": auc2 / (2.0 * n_pos * n_neg), "pixel_ap": ap / n_pos, "pixel_f1max": f1}
    if w_sorted is not None:
        out["aupro"] = pro_area / fpr_limit
    return out


def _regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Global region ids (uint32, 0 = normal) of the connected components of every mask, and their count."""
    from skimage.measure import label

    ids = np.zeros(mask.shape, dtype=np.uint32)
    count = 0
    for i in range(mask.shape[0]):
        if not mask[i].any():
            continue
        lab, k = label(mask[i], connectivity=2, return_num=True)
        ids[i] = lab
        ids[i][lab > 0] += np.uint32(count)
        count += int(k)
    return ids, count


def _pixel_exact(mask: np.ndarray, amap: np.ndarray, wanted: set[str], fpr_limit: float) -> dict[str, float]:
    n_pos = int(np.count_nonzero(mask))
    n_neg = mask.size - n_pos
    pos_values = amap[mask]
    pos_weights = None
    if "aupro" in wanted:
        region, n_regions = _regions(mask)
        pos_region = region[mask]
        del region
        sizes = np.bincount(pos_region, minlength=n_regions + 1).astype(np.float64)
        pos_weights = 1.0 / (sizes[pos_region] * n_regions)
    result = _sweep(amap, pos_values, pos_weights, n_neg, fpr_limit)
    return {k: v for k, v in result.items() if k in wanted}


def _checked_pixels(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    mask = binarize_masks(masks)
    amap = _finite_float(_stack(maps, "maps"), "maps")
    if mask.shape != amap.shape:
        raise DataError(f"masks shape {mask.shape} does not match maps shape {amap.shape}")
    return mask, amap


def pixel_metrics(masks: Any, maps: Any, metrics: Iterable[str] = PIXEL_METRICS,
                  fpr_limit: float = AUPRO_FPR_LIMIT) -> dict[str, float]:
    """Exact pixel AUROC / AP / F1-max / AUPRO of ``maps`` against ``masks`` (both (N, H, W) or (N, 1, H, W)).

    Both classes of pixels must be present (``evaluate`` returns NaN instead of calling this otherwise).
    """
    wanted = set(metrics)
    unknown = wanted - set(PIXEL_METRICS)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"unknown pixel metric {name!r}; available: {suggest(name, PIXEL_METRICS)}")
    if not 0 < fpr_limit <= 1:
        raise ConfigError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    mask, amap = _checked_pixels(masks, maps)
    n_pos = int(np.count_nonzero(mask))
    if n_pos == 0 or n_pos == mask.size:
        raise DataError("pixel metrics need both anomalous and normal pixels in the masks")
    return _pixel_exact(mask, amap, wanted, fpr_limit)


def aupro(masks: Any, maps: Any, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Normalised area under the per-region-overlap curve for FPR in [0, fpr_limit] (exact)."""
    return pixel_metrics(masks, maps, ("aupro",), fpr_limit)["aupro"]


# ---- the entry point -------------------------------------------------------------------------------------

def _wanted(metrics: Iterable[str] | str | None) -> list[str]:
    if metrics is None:
        return list(METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    wanted = list(dict.fromkeys(metrics))
    for name in wanted:
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}; available: {suggest(str(name), METRICS)}")
    return wanted


def evaluate(labels: Any, scores: Any, masks: Any, maps: Any,
             metrics: Iterable[str] | str | None = None) -> MetricResults:
    """All (or the named) metrics as ``{name: float}``, keys in the order of :data:`METRICS`.

    labels (N,) in {0, 1}; scores (N,); masks (N, H, W) or (N, 1, H, W), binarised at > 0.5; maps the same
    shape. numpy arrays or torch tensors. Image metrics are NaN when labels/scores are missing or only one
    class is present; pixel metrics are NaN when masks/maps are missing or the masks hold only one class of
    pixel. Each NaN gets a reason in ``result.reasons`` and a :class:`MetricUndefinedWarning`.
    """
    wanted = _wanted(metrics)
    values: dict[str, float] = {}
    reasons: dict[str, str] = {}

    def undefined(names: list[str], reason: str) -> None:
        for name in names:
            values[name] = math.nan
            reasons[name] = reason
        if names:
            warnings.warn(f"{', '.join(names)} undefined: {reason}", MetricUndefinedWarning, stacklevel=3)

    n_images = None
    image_wanted = [m for m in wanted if m in IMAGE_METRICS]
    y = s = None
    if labels is not None:
        y = _labels(labels)
        n_images = y.size
    if scores is not None:
        s = _finite_float(_vector(scores, "scores"), "scores")
        if y is not None and s.size != y.size:
            raise DataError(f"scores: {s.size} values for {y.size} labels")
    if image_wanted:
        if y is None or s is None:
            undefined(image_wanted, "no image labels or scores given")
        elif y.all() or not y.any():
            kind = "anomalous" if y.all() else "normal"
            undefined(image_wanted, f"image metrics need both classes, but all {y.size} labels are {kind}")
        else:
            values.update(_image_metrics(y, s, set(image_wanted)))

    pixel_wanted = [m for m in wanted if m in PIXEL_METRICS]
    if pixel_wanted:
        if masks is None or maps is None:
            undefined(pixel_wanted, "no ground-truth masks given" if masks is None else "no anomaly maps given")
        else:
            mask, amap = _checked_pixels(masks, maps)
            if n_images is not None and mask.shape[0] != n_images:
                raise DataError(f"masks/maps: {mask.shape[0]} images for {n_images} labels")
            n_pos = int(np.count_nonzero(mask))
            if n_pos == 0:
                undefined(pixel_wanted, "all ground-truth masks are empty (no anomalous pixels)")
            elif n_pos == mask.size:
                undefined(pixel_wanted, "the ground-truth masks hold no normal pixels")
            else:
                values.update(_pixel_exact(mask, amap, set(pixel_wanted), AUPRO_FPR_LIMIT))
    return MetricResults({name: float(values[name]) for name in wanted}, reasons)


class Metric:
    """One named metric as a component: ``metric(labels, scores, masks, maps) -> float``."""

    def __init__(self, name: str) -> None:
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}; available: {suggest(name, METRICS)}")
        self.name = name

    def __call__(self, labels: Any, scores: Any, masks: Any = None, maps: Any = None) -> float:
        return evaluate(labels, scores, masks, maps, metrics=(self.name,))[self.name]

    def __repr__(self) -> str:
        return f"Metric({self.name!r})"


# ---- average precision re-weighted by group (a bootstrap over images) -----------------------------------------

class GroupedAP:
    """The average precision of scored pixels that belong to groups (e.g. the images they come from), recomputed
    for any weight per group without sorting again: ``ap(weights)`` counts every pixel of group ``g``
    ``weights[g]`` times, so a bootstrap over groups is a multinomial draw of weights. ``ap()`` is the plain AP.

    Tied scores are ranked in their given order rather than as one threshold (as ``pixel_ap`` does), which is
    what a resampling estimate needs and differs only where scores tie exactly.
    """

    def __init__(self, scores: Any, labels: Any, groups: Any) -> None:
        s = to_numpy(scores, "scores").reshape(-1)
        y = to_numpy(labels, "labels").reshape(-1).astype(bool)
        g = to_numpy(groups, "groups").reshape(-1).astype(np.int64)
        if not s.size == y.size == g.size:
            raise DataError(f"GroupedAP: scores, labels and groups differ in size ({s.size}, {y.size}, {g.size})")
        if g.size and g.min() < 0:
            raise DataError("GroupedAP: groups must be indices >= 0")
        order = np.argsort(-_finite_float(s, "scores"), kind="stable")
        self.positive = y[order]
        self.groups = g[order]
        self.n_groups = int(g.max()) + 1 if g.size else 0

    def ap(self, weights: Any = None) -> float:
        w = np.ones(self.groups.size) if weights is None else np.asarray(weights, np.float64)[self.groups]
        wp = np.where(self.positive, w, 0.0)
        total_pos = wp.sum()
        if total_pos <= 0:
            return float("nan")
        precision = np.cumsum(wp) / np.maximum(np.cumsum(w), 1e-12)
        return float(np.dot(wp, precision) / total_pos)


def bootstrap_difference(a: GroupedAP, b: GroupedAP, reps: int = 200, seed: int = 0) -> tuple[float, float]:
    """(AP(a) − AP(b), its standard error) by a paired bootstrap over the groups both share: every draw weighs a
    group the same in both, so what the two have in common (hard images, easy ones) cancels out. With a single
    group the error is unknown: infinite."""
    if a.n_groups != b.n_groups:
        raise DataError(f"bootstrap_difference: both need the same groups, got {a.n_groups} and {b.n_groups}")
    n = a.n_groups
    if n < 2:
        return a.ap() - b.ap(), float("inf")
    rng = np.random.default_rng(seed)
    diffs = [a.ap(w) - b.ap(w) for w in (np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(reps))]
    diffs = np.asarray([d for d in diffs if np.isfinite(d)])
    return a.ap() - b.ap(), float(diffs.std(ddof=1)) if diffs.size > 1 else float("inf")
