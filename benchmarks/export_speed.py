"""Inference per image on this CPU: the checkpoint in PyTorch (``predict --run``: the run's precision, "auto", and
fp32) against the exported model in onnxruntime and OpenVINO (fp32), at batch 1 and 8 and 1 and 2 threads.

    .venv/bin/python benchmarks/export_speed.py [--apps almrr,vmpfd] [--configs cpu,paper] [--rounds 3]

A model is the configuration's own with random weights (speed does not depend on them: ALMRR's paper
configuration is ResNet-50, without its ImageNet weights here) and its statistics fitted on random images, exported
to ONNX and OpenVINO in a temporary folder; every measure is the median over ``--rounds`` of one batch of random
images at the model's input size (after one warm-up). Prints, per app and configuration, export time and file size,
then a table of milliseconds per image and the speed-up of each exported runtime over PyTorch at the run's
precision (the ``predict --run`` default).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

CONFIGS = {"cpu": "cpu", "paper": None}


def fitted_method(app, preset: str | None):
    """The app's method for ``preset`` with random weights, its statistics fitted on random normal images."""
    over = ['pipeline.backbone.weights="none"'] if app.name == "almrr" else ['pipeline.pdn.weights="none"']
    config = app.config(preset, over)
    method = app.method_cls(config, torch.device("cpu"), for_training=False)
    size = int(config["data"]["image_size"])
    gen = torch.Generator().manual_seed(0)
    normal = list(torch.rand(12, 3, size, size, generator=gen))
    method.train(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.after_training(normal, normal)
    return method


def median_ms(fn, images, rounds: int) -> float:
    fn(images)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / len(images)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--apps", default="almrr,vmpfd")
    ap.add_argument("--configs", default="cpu,paper", help="cpu (the cpu preset) and/or paper (pipeline.toml)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)
    from apps.common.export import export_method
    from apps.common.exported import ExportedModel
    from ssmad.core.device import resolve_precision

    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    try:
        importlib.import_module("openvino")
        formats = ["onnx", "openvino"]
    except ImportError:
        formats = ["onnx"]
    rows = []
    for app_name in args.apps.split(","):
        app = importlib.import_module(f"apps.{app_name}").APP
        for cfg in args.configs.split(","):
            method = fitted_method(app, CONFIGS[cfg])
            own = method.precision
            size = int(method.config["data"]["image_size"])
            with tempfile.TemporaryDirectory() as tmp:
                files = {}
                for fmt in formats:
                    out = Path(tmp) / f"model{'.onnx' if fmt == 'onnx' else '.xml'}"
                    start = time.perf_counter()
                    export_method(method, out, fmt, log=lambda _: None)
                    parts = [out] if fmt == "onnx" else [out, out.with_suffix(".bin")]   # (IR: .xml + .bin)
                    mb = sum(p.stat().st_size for p in parts) / 1e6
                    print(f"{app_name} {cfg}: {fmt} export {time.perf_counter() - start:.1f} s, {mb:.1f} MB",
                          flush=True)
                    files[fmt] = out
                for n_threads in threads:
                    torch.set_num_threads(n_threads)
                    runtimes = {fmt: ExportedModel.open(f, threads=n_threads) for fmt, f in files.items()}
                    for batch in batches:
                        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
                        res = {}
                        for precision in dict.fromkeys([own, "fp32"]):
                            method.precision = resolve_precision(precision, method.device)
                            with torch.no_grad():
                                res[f"torch {precision}"] = median_ms(method.predict, images, args.rounds)
                        method.precision = own
                        for fmt, model in runtimes.items():
                            res[fmt] = median_ms(model.predict_batch, images, args.rounds)
                        rows.append((app_name, cfg, own, n_threads, batch, res))
                        print(f"  threads {n_threads} batch {batch}: " +
                              ", ".join(f"{k} {v:.1f} ms" for k, v in res.items()), flush=True)
    print("\n| app | config | threads | batch | torch (run's precision) | torch fp32 | onnxruntime | openvino "
          "| onnxruntime speed-up | openvino speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for app_name, cfg, own, n_threads, batch, res in rows:
        base = res[f"torch {own}"]
        ov = res.get("openvino", float("nan"))
        print(f"| {app_name} | {cfg} | {n_threads} | {batch} | {base:.1f} ({own}) | {res['torch fp32']:.1f} | "
              f"{res['onnx']:.1f} | {ov:.1f} | {base / res['onnx']:.2f} | {base / ov:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
