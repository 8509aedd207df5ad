"""Export parity on real data (opt-in, long): a `cpu`-preset ALMRR run on the Magnetic-tile-defect images, exported
to ONNX, scores every test image as the checkpoint does in fp32 — maps within 1e-4 of their range, scores within
1e-5 relative, the same decision at the run's image threshold.

    .venv/bin/python -m pytest -m slow tests/apps/test_export_mt.py -s

The run is ``$SSMAD_MT_ALMRR_RUN`` (a finished `cpu`-preset ALMRR run on this data) when set; otherwise one epoch of
the `cpu` preset is trained here (parity does not depend on how far a model trained; about 5 minutes on 2 cores).
The data is ``../shared/data/mt-defect`` beside the repository (``$SSMAD_MT_ROOT`` elsewhere); without it the test is
skipped. Exporting takes minutes and onnxruntime scores about a second per image on a CPU: 10–20 minutes in all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.almrr import APP
from apps.common import Run
from apps.common.exported import ExportedModel

MT_ROOT = Path(os.environ.get("SSMAD_MT_ROOT", Path(__file__).resolve().parents[2].parent / "shared" / "data"
                              / "mt-defect"))

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (MT_ROOT / "MT_Free").is_dir(),
                                                  reason=f"no Magnetic-tile-defect data at {MT_ROOT}")]


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory, run_app) -> Path:
    if given := os.environ.get("SSMAD_MT_ALMRR_RUN"):
        return Path(given)
    out = tmp_path_factory.mktemp("mt") / "run"
    code, _, err = run_app(APP, "train", "--data", f"mtd:{MT_ROOT}", "--preset", "cpu", "--epochs", "1", "--no-test",
                           "--out", str(out), "--device", "cpu")
    assert code == 0, err
    return out


def test_the_exported_cpu_preset_run_scores_every_test_image_as_the_checkpoint(mt_run, tmp_path):
    run = Run.open(mt_run)
    start = time.perf_counter()
    run.export(tmp_path / "model.onnx", log=lambda _: None)
    exported = time.perf_counter() - start
    model = ExportedModel.open(tmp_path / "model.onnx")
    method = run.method("cpu", "fp32")
    test = run.data().dataset.test
    threshold = run.thresholds["image"]
    worst_map, worst_score, flips, seconds = 0.0, 0.0, 0, 0.0
    for i in range(0, len(test), 8):
        images = torch.stack([test[j].image for j in range(i, min(i + 8, len(test)))])
        with torch.no_grad():
            ref = method.predict(images)
        start = time.perf_counter()
        got = model.predict_batch(images)
        seconds += time.perf_counter() - start
        a, b = got.anomaly_map.numpy(), ref.anomaly_map.float().numpy()
        worst_map = max(worst_map, float(np.abs(a - b).max() / (b.max() - b.min())))
        s, r = got.score.numpy(), ref.score.float().numpy()
        worst_score = max(worst_score, float((np.abs(s - r) / np.abs(r)).max()))
        flips += int(((s > threshold) != (r > threshold)).sum())
    print(f"\n{mt_run}: {len(test)} test images; export {exported:.0f} s; onnxruntime {seconds / len(test):.3f} s per "
          f"image (batch 8); largest map difference {worst_map:.2e} of the range, score {worst_score:.2e} relative; "
          f"{flips} decisions differ")
    assert worst_map <= 1e-4 and worst_score <= 1e-5 and flips == 0
