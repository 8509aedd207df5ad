"""``method.distance_weight = "auto"``: the distance weight chosen after training on synthetic anomalies of the
held-out normal images (the run's own synthesiser, seeded by ``train.seed``; never the test set), as the candidate
whose fused map has the highest pixel AP. Also the validation score of ``train.select = "best"``, on the same
anomalies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .fusion import fuse

if TYPE_CHECKING:
    from .method import ALMRR

REPEATS = 2          # synthetic anomalies per held-out image
MAX_IMAGES = 100     # held-out images the choice uses at most (a random subset already): bounds its time and memory
FEW_IMAGES = 20      # below this many the log says the choice is noisy


def pixel_ap(mask: torch.Tensor, amap: torch.Tensor) -> float:
    from ssmad.scoring import evaluate

    return float(evaluate(None, None, mask, amap, ["pixel_ap"])["pixel_ap"])


def synthetic_rng(config: dict[str, Any]) -> np.random.Generator:
    """The rng of the anomalies that choose and validate: seeded by ``train.seed``, the same anomalies every time."""
    return np.random.default_rng(int(config["train"]["seed"]))


@torch.no_grad()
def synthetic_maps(method: ALMRR, images: list[torch.Tensor], rng: np.random.Generator,
                   repeats: int = REPEATS) -> dict[str, torch.Tensor]:
    """The maps of ``repeats`` synthetic anomalies of every image, made by the run's synthesiser, and of the clean
    image of each draw (which the synthesiser may have rotated): ``refined`` (the refiner's map, no distance added)
    and ``distance`` (N×1×H×W, on the CPU), ``mask`` (N×1×H×W, > 0.5 anomalous), ``clean`` (N, bool), ``repeat`` (N)
    and ``image`` (N, the index in ``images``). Per repeat and batch: the anomalous versions, then the clean ones.
    Without a refiner both maps are the distance map."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("refined", "distance", "mask", "clean", "repeat", "image")}
    step = method.eval_batch_size
    for rep in range(repeats):
        for start in range(0, len(images), step):
            items = [method.synthesise(im, rng) for im in images[start:start + step]]
            for key, is_clean in (("anomalous", False), ("clean", True)):
                refined, dist = method.branch_maps(torch.stack([it[key] for it in items]).to(method.device))
                out["refined"].append(refined.cpu())
                out["distance"].append(dist.cpu())
                mask = torch.stack([it["mask"] for it in items]) > 0.5
                out["mask"].append(torch.zeros_like(mask) if is_clean else mask)
                out["clean"].append(torch.full((len(items),), is_clean))
                out["repeat"].append(torch.full((len(items),), rep))
                out["image"].append(torch.arange(start, start + len(items)))
    return {k: torch.cat(v) for k, v in out.items()}


def choose(maps: dict[str, torch.Tensor], scaled: torch.Tensor, candidates: list[float], rule: str,
           n_images: int) -> tuple[float, dict[str, Any], list[str]]:
    """``(weight, record, log lines)``: the candidate whose map ``fuse(refined, scaled, rule, w)`` has the highest
    pixel AP on the synthetic-anomaly ``maps`` of ``n_images`` images (ties: the smaller weight; no anomaly made:
    0, the refined map alone). ``scaled``: the scaled distance maps."""
    what = f"{n_images} held-out normal images x {REPEATS} synthetic anomalies"
    if not maps["mask"].any():
        return 0.0, {"weight": 0.0, "pixel_ap": {}, "images": n_images}, [
            f"method.distance_weight = auto: the synthesiser made no anomaly in {what}; weight 0 (the refined map "
            f"alone)"]
    ap = {w: pixel_ap(maps["mask"], fuse(maps["refined"], scaled, rule, w)) for w in candidates}
    best = max(candidates, key=lambda w: (ap[w], -w))
    table = ", ".join(f"{w:g}: {100 * v:.1f}" for w, v in ap.items())
    lines = [f"method.distance_weight = auto: {best:g}, the highest pixel AP on {what} ({table})"]
    if n_images < FEW_IMAGES:
        lines.append(f"note: only {n_images} held-out images, so this choice is noisy; hold out more "
                     f"(train.val_fraction) or set method.distance_weight to a number")
    return best, {"weight": best, "pixel_ap": {str(w): v for w, v in ap.items()}, "images": n_images}, lines
