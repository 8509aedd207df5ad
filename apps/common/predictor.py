"""Scoring image files with a trained method: one :class:`Prediction` per file, a failure confined to its file.

Used by ``predict``; it reads no dataset and writes nothing (``predict_io`` writes the results).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssmad.core import DataError


@dataclass
class Prediction:
    """The result for one image file.

    ``score``: the image score (None on error); ``anomalous``: the decision at the threshold used (None without
    one, or on error); ``anomaly_map``: float32 H×W at the image's own resolution (None on error); ``branches``:
    each branch map the method reports alone, same size; ``image``: the decoded H×W×3 image in [0, 1] (for
    overlays); ``error``: None, or why this image has no result."""

    path: Path
    score: float | None = None
    anomalous: bool | None = None
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    branches: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    error: str | None = None


def _read(path: Path) -> np.ndarray:
    """H×W×3 float32 in [0, 1]; a DataError naming the file for whatever stops it being read."""
    from ssmad.datasets import load_image

    try:
        return load_image(path)
    except DataError:
        raise
    except Exception as exc:   # a decoder's own error types (PIL, tifffile, numpy): one row, not the command
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def to_size(amap, size: tuple[int, int]) -> np.ndarray:
    """An H'×W' torch map resized (bilinear) to ``size`` = (H, W), as a float32 numpy array."""
    import torch

    return torch.nn.functional.interpolate(amap[None, None].float(), size=size, mode="bilinear",
                                           align_corners=False)[0, 0].numpy().astype(np.float32)


def predict_files(method, files: Sequence[Path], threshold: float | None, branches: bool = False
                  ) -> Iterator[Prediction]:
    """Score ``files`` as one batch with ``method`` (trained, in eval mode), yielding one Prediction per file in
    order. An image that cannot be read, or whose scoring fails (too small for the model, out of memory, ...), gets
    a Prediction with ``error`` set; the others are scored all the same (a failing batch is scored again image by
    image, so one bad image does not take its batch with it). ``branches``: also return the branch maps."""
    import torch

    from ssmad.datasets import resize_image
    from ssmad.scoring.report import flagged

    size = int(method.config["data"]["image_size"])
    results: list[Prediction] = []
    for path in files:
        try:
            results.append(Prediction(Path(path), image=_read(Path(path))))
        except DataError as exc:
            results.append(Prediction(Path(path), error=str(exc)))
    todo = [r for r in results if r.error is None]

    def run(group: list[Prediction]) -> None:
        batch = torch.stack([resize_image(r.image, size) for r in group]).to(method.device)
        with torch.no_grad():
            res = method.predict(batch)
        maps = res.anomaly_map[:, 0].float().cpu()
        extras = {n: m[:, 0].float().cpu() for n, m in res.extras.items()} if branches else {}
        for i, (r, score) in enumerate(zip(group, res.score.float().cpu().tolist())):
            hw = r.image.shape[:2]
            r.anomaly_map = to_size(maps[i], hw)
            r.branches = {n: to_size(m[i], hw) for n, m in extras.items()}
            r.score = float(score)
            r.anomalous = None if threshold is None else bool(flagged(r.score, threshold))

    if todo:
        try:
            run(todo)
        except Exception as exc:   # find the image that fails: each is scored alone
            if len(todo) == 1:
                _fail(todo[0], exc)
            else:
                for r in todo:
                    try:
                        run([r])
                    except Exception as exc_one:
                        _fail(r, exc_one)
    yield from results


def predict_in_batches(method, files: Sequence[str | Path], threshold: float | None, batch_size: int,
                       branches: bool = False) -> Iterator[Prediction]:
    """:func:`predict_files` over ``files``, ``batch_size`` at a time, in order (``method``: anything with
    ``config``, ``device`` and ``predict(batch)``: a run's method or an exported model's scorer)."""
    files = [Path(f) for f in files]
    for start in range(0, len(files), batch_size):
        yield from predict_files(method, files[start:start + batch_size], threshold, branches=branches)


def _fail(r: Prediction, exc: Exception) -> None:
    r.error = f"cannot score image {r.path}: {type(exc).__name__}: {' '.join(str(exc).split())}"
    r.anomaly_map, r.branches, r.score, r.anomalous = None, {}, None, None
