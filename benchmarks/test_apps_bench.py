"""CPU/GPU inference per image of both apps' default (paper) pipelines at 256×256.

ResNet-50 weights are not downloadable here; the pipeline is built with ``weights = "none"`` (random weights),
which costs exactly the same time. Run: ``.venv/bin/python -m pytest benchmarks/test_apps_bench.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apps.common.config import load_config

APPS = Path(__file__).resolve().parents[1] / "apps"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(app: str, batch: int):
    if app == "almrr":
        from apps.almrr.method import ALMRR as cls
        over = ['pipeline.backbone.weights="none"']
    else:
        from apps.vmpfd.method import VMPFD as cls
        over = []
    method = cls(load_config(APPS / app, None, None, over), DEVICE)
    method.train(False)
    if app == "vmpfd":  # quantile statistics as after training (values do not change the cost)
        lam, gam = method.raw_maps(torch.rand(2, 3, 256, 256, device=DEVICE))
        method.norm_local.fit(lam)
        method.norm_global.fit(gam)
    return method, torch.rand(batch, 3, 256, 256, device=DEVICE)


@pytest.mark.parametrize("app", ["almrr", "vmpfd"])
@pytest.mark.parametrize("batch", [1, 8])
def test_inference_per_image(benchmark, app, batch):
    method, images = build(app, batch)
    method.predict(images)  # warm-up

    def run():
        method.predict(images)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(app=app, batch=batch, device=str(DEVICE), threads=torch.get_num_threads())
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["seconds_per_image"] = benchmark.stats.stats.min / batch
