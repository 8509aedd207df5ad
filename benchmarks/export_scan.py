"""The selective scan in an exported graph: each formulation tried, on the ALMRR ``cpu`` preset's ViM reconstructor
(random weights): ONNX graph size (nodes), export time, onnxruntime time per image and agreement with PyTorch.

    .venv/bin/python benchmarks/export_scan.py [--chunks 8,16,32,64] [--reference] [--threads 1]

Formulations: ``chunked`` (closed form within chunks of T steps, T ∈ ``--chunks``), ``prefix`` (a log-depth
Hillis–Steele prefix scan over the whole sequence), ``unrolled`` (the recurrence step by step; its export of a
256-token model did not finish within 10 minutes here) and, with ``--reference``, the reference backend's loop.
The C++ ``cpu``, Triton and mamba_ssm kernels do not trace at all, and the ``torch`` backend is an autograd function
whose blocked loop would unroll the same way as the reference.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def reconstructor():
    from apps.almrr import APP
    from apps.common.config import build_role

    config = APP.config("cpu", ['pipeline.backbone.weights="none"'])
    backbone = build_role(config, "backbone", unweighted=True)
    channels = int(sum(backbone.channels))
    size = int(config["method"]["feature_size"])
    torch.manual_seed(0)
    return build_role(config, "reconstructor", in_channels=channels, feature_size=size).eval(), channels, size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", default="16", help="chunk lengths of the chunked form (empty: none)")
    ap.add_argument("--only", default="", help="comma-separated form names to run (default: all)")
    ap.add_argument("--reference", action="store_true", help="also the unrolled sequential loop (slow to export)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    import onnx
    import onnxruntime as ort

    from ssmad.ssm import BiMambaMixer
    from ssmad.ssm.chunked import selective_scan_chunked, selective_scan_prefix, selective_scan_unrolled
    from ssmad.ssm.scan import selective_scan_reference

    torch.set_num_threads(args.threads)
    net, channels, size = reconstructor()
    mixers = [m for m in net.modules() if isinstance(m, BiMambaMixer)]
    x = torch.randn(1, channels, size, size)
    with torch.no_grad():
        ref = net(x)
    forms = {f"chunked T={t}": functools.partial(selective_scan_chunked, chunk=int(t))
             for t in args.chunks.split(",") if t}
    forms["prefix (log-depth)"] = selective_scan_prefix
    forms["unrolled (step by step)"] = selective_scan_unrolled
    if args.reference:
        forms["reference (unrolled)"] = selective_scan_reference
    print(f"ViM reconstructor: {len(mixers)} bidirectional mixers, input 1×{channels}×{size}×{size}")
    print("| scan | ONNX nodes | export s | onnxruntime ms / image | torch ms / image | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, scan in forms.items():
        if args.only and name.split()[0] not in args.only.split(","):
            continue
        for m in mixers:
            m.scan = scan
        with torch.no_grad():
            start = time.perf_counter()
            for _ in range(args.rounds):
                net(x)
            torch_ms = 1000 * (time.perf_counter() - start) / args.rounds
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(tmp) / "m.onnx"
            start = time.perf_counter()
            torch.onnx.export(net, (x,), dynamo=True, input_names=["x"], verbose=False).save(str(path))
            export_s = time.perf_counter() - start
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            sess.run(None, {"x": x.numpy()})
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                out = sess.run(None, {"x": x.numpy()})[0]
                times.append(time.perf_counter() - start)
        diff = float(np.abs(out - ref.numpy()).max())
        print(f"| {name} | {nodes} | {export_s:.1f} | {1000 * statistics.median(times):.1f} | {torch_ms:.1f} | "
              f"{diff:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
