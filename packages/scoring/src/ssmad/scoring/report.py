"""Run reports: a metrics JSON and a Markdown table, heat-map figures and overlays.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display needed) and
every file is written atomically, so an interrupted run leaves earlier reports intact.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssmad.core import DataError
from ssmad.core.files import atomic_write, atomic_write_text

from .metrics import METRICS, to_numpy

METRIC_TITLES = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1max": "pixel F1-max",
    "aupro": "AUPRO (FPR ≤ 0.3)",
}
JSON_NAME = "metrics.json"
MARKDOWN_NAME = "metrics.md"
DEFAULT_CMAP = "jet"


# ---- metric tables ---------------------------------------------------------------------------------------

def _number(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"metrics {where}: expected a number, got {value!r}") from None


def mean_row(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over categories of every metric, ignoring NaN (NaN when no category has the metric)."""
    keys = list(dict.fromkeys(k for row in results.values() for k in row))
    out = {}
    for key in keys:
        vals = [_number(row.get(key), f"{cat}/{key}") for cat, row in results.items()]
        finite = [v for v in vals if not math.isnan(v)]
        out[key] = float(np.mean(finite)) if finite else math.nan
    return out


def _json_value(v: float) -> float | None:
    return None if math.isnan(v) else v


def _percent(v: float) -> str:
    return "–" if math.isnan(v) else f"{100.0 * v:.1f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def metrics_markdown(results: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """The Markdown table: one row per category plus ``mean``, the seven metrics in percent, NaN as "–"."""
    mean = mean_row(results)
    lines = []
    if title:
        lines += [f"# {_cell(title)}", ""]
    lines += ["| category | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
              "|---|" + "---:|" * len(METRICS)]
    rows = [(str(cat), row) for cat, row in results.items()] + [("mean", mean)]
    for cat, row in rows:
        cells = [_percent(_number(row.get(m), f"{cat}/{m}")) for m in METRICS]
        lines.append(f"| {_cell(cat)} | " + " | ".join(cells) + " |")
    lines += ["", "Values in percent; – marks a metric the data cannot define (see metrics.json)."]
    return "\n".join(lines) + "\n"


def write_metrics(out_dir: str | os.PathLike, results: Mapping[str, Mapping[str, float]],
                  title: str = "") -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` (atomically); returns both paths.

    ``results`` maps category -> {metric: value}. The JSON keeps every key given (NaN written as null) plus
    the ``mean`` over categories; :func:`read_metrics` reads it back.
    """
    if not results:
        raise DataError(f"write_metrics {out_dir}: no results to write")
    table = {str(cat): {str(k): _number(v, f"{cat}/{k}") for k, v in row.items()} for cat, row in results.items()}
    mean = mean_row(table)
    doc = {
        "title": title,
        "metrics": list(METRICS),
        "categories": {cat: {k: _json_value(v) for k, v in row.items()} for cat, row in table.items()},
        "mean": {k: _json_value(v) for k, v in mean.items()},
    }
    out = Path(out_dir)
    json_path = atomic_write_text(out / JSON_NAME, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    md_path = atomic_write_text(out / MARKDOWN_NAME, metrics_markdown(table, title))
    return json_path, md_path


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A metrics JSON written by :func:`write_metrics`, nulls turned back into NaN."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"metrics file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"metrics file {path}: cannot read: {exc}") from None
    if not isinstance(doc, dict) or "categories" not in doc:
        raise DataError(f"metrics file {path}: not a metrics report (no 'categories')")
    doc["categories"] = {cat: {k: _number(v, f"{cat}/{k}") for k, v in row.items()}
                         for cat, row in doc["categories"].items()}
    doc["mean"] = {k: _number(v, f"mean/{k}") for k, v in doc.get("mean", {}).items()}
    return doc


# ---- decisions at a fixed threshold ----------------------------------------------------------------------

DECISIONS_JSON = "decisions.json"
DECISIONS_MARKDOWN = "decisions.md"


def flagged(scores: Any, threshold: float) -> Any:
    """The apps' decision rule, in one place: an image is flagged (anomalous) when its score is above the threshold
    (a score equal to it passes). Elementwise on arrays; a NumPy bool for one score."""
    return np.asarray(scores, dtype=np.float64) > threshold


def _labels_scores(labels: Any, scores: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as a flat bool array and scores as a flat float64 array of the same size (else ``who``'s error)."""
    y = to_numpy(labels, "labels").reshape(-1).astype(bool)
    s = to_numpy(scores, "scores").reshape(-1).astype(np.float64)
    if y.size != s.size:
        raise DataError(f"{who}: {s.size} scores for {y.size} labels")
    return y, s


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def decisions_at(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """What one image threshold decides: an image is flagged when its score is above ``threshold`` (as the apps'
    ``predict`` decides). Counts of defective (label 1) and normal images and of those flagged, and three shares:
    ``recall`` (defective images flagged), ``false_alarm_rate`` (normal images flagged) and ``precision``
    (flagged images that are defective); a share with nothing to divide by is NaN."""
    y, s = _labels_scores(labels, scores, "decisions")
    thr = _number(threshold, "threshold")
    if not math.isfinite(thr):
        raise DataError(f"decisions: the threshold must be a finite number, got {threshold!r}")
    up = flagged(s, thr)
    caught, false_alarms = int((up & y).sum()), int((up & ~y).sum())
    n_defective, n_normal = int(y.sum()), int((~y).sum())
    return {"threshold": thr, "defective": n_defective, "defective_flagged": caught, "normal": n_normal,
            "normal_flagged": false_alarms, "recall": _share(caught, n_defective),
            "false_alarm_rate": _share(false_alarms, n_normal), "precision": _share(caught, caught + false_alarms)}


def _of(part: int, whole: int) -> str:
    share = _share(part, whole)
    return f"{part} of {whole}" + ("" if math.isnan(share) else f" ({100.0 * share:.1f}%)")


def decisions_markdown(rows: Mapping[str, Mapping[str, float]], title: str = "", note: str = "") -> str:
    """One table row per category of :func:`decisions_at`: the threshold, defective and normal images flagged
    (count and share) and the precision of the flags; ``note`` follows the table."""
    lines = [f"# {_cell(title)}", ""] if title else []
    lines += ["| category | threshold | defective images flagged | normal images flagged | flags that are defective |",
              "|---|---:|---:|---:|---:|"]
    for cat, row in rows.items():
        n = {k: int(row[k]) for k in ("defective", "defective_flagged", "normal", "normal_flagged")}
        cells = [f"{float(row['threshold']):.4g}", _of(n["defective_flagged"], n["defective"]),
                 _of(n["normal_flagged"], n["normal"]),
                 _of(n["defective_flagged"], n["defective_flagged"] + n["normal_flagged"])]
        lines.append(f"| {_cell(cat)} | " + " | ".join(cells) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_decisions(out_dir: str | os.PathLike, rows: Mapping[str, Mapping[str, float]], title: str = "",
                    note: str = "") -> tuple[Path, Path]:
    """Write ``decisions.json`` and ``decisions.md`` (rows of :func:`decisions_at`) into ``out_dir`` atomically."""
    if not rows:
        raise DataError(f"write_decisions {out_dir}: no decisions to write")
    doc = {"title": title, "note": note,
           "categories": {str(cat): {k: _json_value(float(v)) if isinstance(v, float) else v for k, v in row.items()}
                          for cat, row in rows.items()}}
    out = Path(out_dir)
    json_path = atomic_write_text(out / DECISIONS_JSON, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    md_path = atomic_write_text(out / DECISIONS_MARKDOWN, decisions_markdown(rows, title, note))
    return json_path, md_path


# ---- colouring -------------------------------------------------------------------------------------------

def _map2d(amap: Any, what: str = "amap") -> np.ndarray:
    arr = to_numpy(amap, what)
    while arr.ndim > 2 and arr.shape[0] == 1:   # leading batch/channel axes only: a 1-pixel-high map stays 2-D
        arr = arr[0]
    if arr.ndim != 2:
        raise DataError(f"{what}: expected an H×W map, got shape {tuple(np.shape(amap))}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what}: expected numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _image01(image: Any, what: str = "image") -> np.ndarray:
    """H×W×3 float64 in [0, 1] from H×W×3 / H×W / 3×H×W (float in [0, 1] or uint8)."""
    arr = to_numpy(image, what)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DataError(f"{what}: expected an H×W×3 (or H×W) image, got shape {tuple(np.shape(image))}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what}: expected numbers, got dtype {arr.dtype}")
    return np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0)


def _range(m: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    finite = m[np.isfinite(m)]
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    return lo, hi


def colorize(amap: Any, vmin: float | None = None, vmax: float | None = None, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """An H×W map as a uint8 H×W×3 colour image: ``vmin`` -> the colormap's start, ``vmax`` -> its end
    (defaults: the map's min and max; values outside are clipped, NaN shown as ``vmin``)."""
    import matplotlib

    m = _map2d(amap)
    lo, hi = _range(m, vmin, vmax)
    norm = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    norm = np.clip(np.nan_to_num(norm, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return np.ascontiguousarray(matplotlib.colormaps[cmap](norm, bytes=True)[..., :3])


def overlay(image: Any, amap: Any, vmin: float | None = None, vmax: float | None = None, alpha: float = 0.5,
            cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """The coloured map blended over the image: ``(1 - alpha) * image + alpha * colorize(map)``, uint8 H×W×3."""
    img = _image01(image)
    m = _map2d(amap)
    if m.shape != img.shape[:2]:
        raise DataError(f"overlay: map of shape {m.shape} does not match image of size {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"overlay: alpha must be in [0, 1], got {alpha}")
    colour = colorize(m, vmin, vmax, cmap).astype(np.float64) / 255.0
    out = (1.0 - alpha) * img + alpha * colour
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


# ---- figures ---------------------------------------------------------------------------------------------

def heatmap_figure(image: Any, amap: Any, mask: Any = None, title: str = "", vmin: float | None = None,
                   vmax: float | None = None, cmap: str = DEFAULT_CMAP):
    """A matplotlib Figure (Agg canvas) with panels image | map (+ colour bar) | mask | overlay."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = _image01(image)
    m = _map2d(amap)
    if m.shape != img.shape[:2]:
        raise DataError(f"heat-map figure: map of shape {m.shape} does not match image of size {img.shape[:2]}")
    gt = None
    if mask is not None:
        gt = _map2d(mask, "mask")
        if gt.shape != m.shape:
            raise DataError(f"heat-map figure: mask of shape {gt.shape} does not match map of shape {m.shape}")
        gt = (gt > 0.5).astype(np.float64)
    lo, hi = _range(m, vmin, vmax)
    if hi <= lo:
        hi = lo + 1e-12

    fig = Figure(figsize=(16.0, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    axes[0].imshow(img, interpolation="nearest")
    axes[0].set_title("image")
    shown = axes[1].imshow(m, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    axes[1].set_title("anomaly map")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    if gt is None:
        axes[2].imshow(np.zeros(m.shape), cmap="gray", vmin=0.0, vmax=1.0)
        axes[2].text(0.5, 0.5, "no mask", color="white", ha="center", va="center", transform=axes[2].transAxes)
    else:
        axes[2].imshow(gt, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[2].set_title("ground truth")
    axes[3].imshow(overlay(img, m, lo, hi, 0.5, cmap), interpolation="nearest")
    if gt is not None and gt.any() and gt.min() < 1:
        axes[3].contour(gt, levels=[0.5], colors="white", linewidths=0.8)
    axes[3].set_title("overlay")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def save_heatmap_figure(path: str | os.PathLike, image: Any, amap: Any, mask: Any = None, title: str = "",
                        vmin: float | None = None, vmax: float | None = None) -> Path:
    """Write the four-panel figure of :func:`heatmap_figure` as a PNG (atomically); returns the path."""
    fig = heatmap_figure(image, amap, mask, title, vmin, vmax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return atomic_write(path, lambda fh: fh.write(data))


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"
    return stem[-80:]


def pick_informative(labels: Any, scores: Any, k: int = 8) -> list[tuple[int, str]]:
    """Up to ``k`` (index, reason) pairs, taken in turn from: anomalous images with the lowest scores
    (``missed``), normal images with the highest scores (``false_alarm``), anomalous images with the highest
    scores (``top_anomaly``); no image twice."""
    y, s = _labels_scores(labels, scores, "save_worst")
    anomalous = np.flatnonzero(y)
    normal = np.flatnonzero(~y)
    queues = [
        ("missed", anomalous[np.argsort(s[anomalous], kind="stable")].tolist()),
        ("false_alarm", normal[np.argsort(-s[normal], kind="stable")].tolist()),
        ("top_anomaly", anomalous[np.argsort(-s[anomalous], kind="stable")].tolist()),
    ]
    chosen: list[tuple[int, str]] = []
    used: set[int] = set()
    while len(chosen) < k and any(q for _, q in queues):
        for reason, queue in queues:
            while queue and queue[0] in used:
                queue.pop(0)
            if queue and len(chosen) < k:
                i = queue.pop(0)
                used.add(i)
                chosen.append((i, reason))
    return chosen


def _apart(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with 4 significant digits, or as many more (up to 9) as it takes to write them apart."""
    for digits in range(4, 10):
        sa, sb = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if sa != sb:
            break
    return sa, sb


def save_worst(out_dir: str | os.PathLike, images: Sequence[Any], maps: Sequence[Any], masks: Sequence[Any] | None,
               labels: Any, scores: Any, names: Sequence[str], k: int = 8,
               threshold: float | None = None) -> list[Path]:
    """One heat-map figure per image chosen by :func:`pick_informative`, all with one colour scale
    (the min and max over every map given); returns the PNG paths in the order chosen. Each title gives the
    image's label and score and, with an image ``threshold``, whether that threshold flags it."""
    n = len(names)
    for what, seq in (("images", images), ("maps", maps), ("masks", masks)):
        if seq is not None and len(seq) != n:
            raise DataError(f"save_worst: {len(seq)} {what} for {n} names")
    if len(to_numpy(labels, "labels").reshape(-1)) != n:
        raise DataError(f"save_worst: {len(to_numpy(labels, 'labels').reshape(-1))} labels for {n} names")
    chosen = pick_informative(labels, scores, k)
    if not chosen:
        return []
    y, s = _labels_scores(labels, scores, "save_worst")
    lows, highs = [], []
    for i in range(n):
        m = _map2d(maps[i], f"maps[{i}]")
        finite = m[np.isfinite(m)]
        if finite.size:
            lows.append(finite.min())
            highs.append(finite.max())
    vmin = float(min(lows)) if lows else 0.0
    vmax = float(max(highs)) if highs else 1.0
    out = Path(out_dir)
    paths = []
    for rank, (i, reason) in enumerate(chosen):
        score = f"score {float(s[i]):.4g}"
        if threshold is not None:
            up = bool(flagged(s[i], threshold))
            shown, thr = _apart(float(s[i]), float(threshold))
            score = f"score {shown} {'>' if up else '≤'} threshold {thr}: {'flagged' if up else 'passed'}"
        title = f"{names[i]} — {reason.replace('_', ' ')} — {'defective' if y[i] else 'normal'} image, {score}"
        path = out / f"{rank:02d}_{reason}_{_safe_name(names[i])}.png"
        mask = None if masks is None else masks[i]
        paths.append(save_heatmap_figure(path, images[i], maps[i], mask, title, vmin, vmax))
    return paths
