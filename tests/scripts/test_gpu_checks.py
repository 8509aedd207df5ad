"""scripts/gpu_checks.py, the prepared GPU checks, runs end to end (here on a CPU with --quick)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("gpu_checks")


def test_quick_run_writes_both_reports(script, tmp_path, capsys):
    assert script.main(["--out", str(tmp_path), "--device", "cpu", "--quick", "--repeats", "1"]) == 0
    res = json.loads((tmp_path / "gpu_checks.json").read_text())
    assert res["environment"]["device"] == "cpu"
    assert "torch" in res["scan_agreement"] and all(r["pass"] for r in res["scan_agreement"].values())
    assert set(res["scan_speed"]) == {"reference", *res["scan_agreement"]}
    for app in ("almrr", "vmpfd"):
        r = res["apps"][app]
        assert r["train_images_per_s"] > 0 and r["latency_b1_ms"] > 0 and r["image_size"] == 64
    assert res["torchrun"]["exit_code"] == 0 and res["torchrun"]["backend"] == "gloo", res["torchrun"]
    md = (tmp_path / "gpu_checks.md").read_text()
    assert "| torch |" in md and "| vmpfd | 64 |" in md and "backend gloo" in md
    assert md in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_missing_is_one_line(script, tmp_path, capsys):
    assert script.main(["--out", str(tmp_path), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "error: --device cuda: CUDA is not available here"


def test_an_app_failing_on_the_device_keeps_the_other_figures(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(script, "scan_backends", lambda device: ["torch"])
    monkeypatch.setattr(script, "scan_agreement", lambda device, names: {"torch": {"pass": True, "worst_ratio": 0.1}})
    monkeypatch.setattr(script, "scan_speed", lambda *a: {})
    fine = {"image_size": 64, "parameters_m": 1.0, "train_batch": 4, "train_images_per_s": 10.0,
            "infer_b1_images_per_s": 5.0, "infer_b4_images_per_s": 9.0, "latency_b1_ms": 200.0}

    def throughput(app, *a):
        if app == "almrr":
            raise RuntimeError("CUDA out of memory")
        return fine

    monkeypatch.setattr(script, "app_throughput", throughput)
    assert script.main(["--out", str(tmp_path), "--device", "cpu", "--quick", "--repeats", "1"]) == 1
    res = json.loads((tmp_path / "gpu_checks.json").read_text())
    assert res["apps"] == {"almrr": {"error": "RuntimeError: CUDA out of memory"}, "vmpfd": fine}
    md = (tmp_path / "gpu_checks.md").read_text()
    assert "| almrr | failed: RuntimeError: CUDA out of memory |" in md and "| vmpfd | 64 |" in md
