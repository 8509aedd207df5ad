"""The GPU checks in one run: scan backends' agreement and speed, and the apps' throughput (it also runs on a CPU).

    python scripts/gpu_checks.py --out DIR [--device cuda] [--repeats 5] [--quick]

Writes ``DIR/gpu_checks.json`` and ``DIR/gpu_checks.md`` and prints the Markdown:

- environment: torch, the device, whether ``mamba_ssm`` and ``causal_conv1d`` import, the CPU kernel's status; on
  CUDA the Triton kernels' status (their check at first use) and the backend ``auto`` picks;
- scan: every backend usable on the device (``torch``; ``mamba_ssm`` when it imports; ``triton`` on CUDA when
  Triton is installed; ``cpu`` on a CPU) against ``reference`` run on the same device — outputs and all eight
  gradients at mamba_ssm's tolerances (rtol 6e-4, atol 2e-3) over a few shapes (L = 1, odd L, N ∈ {1, 4, 16})
  — and the time of the forward (no grad) and of forward+backward at the ALMRR shape (B 4, D 384, L 256, N 16),
  each backend's minimum over ``--repeats``; for ``triton`` also each launch setting (channels per program 4-32 ×
  warps 1-4), checked and timed, to set its defaults;
- torchrun: one epoch of ALMRR's smoke preset launched by ``torchrun --nproc-per-node 1`` (the distributed
  training path: process group, DistributedDataParallel, synchronised batch norms), with the backend it chose
  (nccl on CUDA) and its exit code;
- apps: the paper configurations (``pipeline.toml`` of each app; ALMRR's ResNet-50 with random weights, which
  cost the same time as ImageNet ones) at 256×256 — training images/s (forward, backward and an optimiser step on
  random inputs at the paper's batch: ALMRR 4, VMPFD-AD 48), inference images/s at batch 1 and 32, and the
  latency per image at batch 1 in ms (the VMPFD-AD paper claims under 15 ms).

Metrics on real data come from the apps' own ``train``/``test`` (the commands are in docs/history/results-mt.md; add
``--device cuda`` and drop ``--preset cpu`` for the paper configuration). ``scripts/gpu_mt_train.py`` runs this
script and then trains ALMRR's two reconstructors on Magnetic-tile-defect, from data staged beforehand.
``--quick`` runs the smoke presets at a few steps each: the test suite uses it on a CPU to keep this script working.

On any CUDA machine, also an offline one whose Python has PyTorch, pluggy, attrs and scikit-image:

    python3 -m pip install -q --no-deps --no-build-isolation -e packages/core -e packages/ssm -e packages/backbones \
        -e packages/synth -e packages/heads -e packages/scoring -e packages/datasets \
      && python3 scripts/gpu_checks.py --out OUT_DIR

(the editable installs register the packages' entry points, which the component registry reads).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RTOL, ATOL = 6e-4, 2e-3
ALMRR_SHAPE = (4, 384, 256, 16)
SCAN_CASES = [(2, 5, 1, 4), (2, 5, 33, 16), (1, 3, 80, 1), (4, 64, 256, 16)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, device: torch.device, repeats: int) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs after one warm-up (seconds)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def environment(device: torch.device) -> dict[str, Any]:
    from ssmad.ssm import causal_conv1d_available, cpu_kernel_status, mamba_ssm_available

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "mamba_ssm": mamba_ssm_available(), "causal_conv1d": causal_conv1d_available(),
           "cpu_kernel": cpu_kernel_status(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        from ssmad.ssm import AutoScan
        from ssmad.ssm.triton_scan import triton_status

        env["triton"] = triton_status(device)      # the check auto runs at first use: compiles and compares
        env["auto_scan"] = AutoScan().backend_for(torch.empty(0, device=device))
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return env


def scan_backends(device: torch.device) -> list[str]:
    from ssmad.core import components
    from ssmad.ssm import cpu_kernel_available, mamba_ssm_available

    names = ["torch"]
    if device.type == "cuda" and mamba_ssm_available():
        names.append("mamba_ssm")
    if device.type == "cuda" and "triton" in {c.name for c in components("scan")}:
        names.append("triton")                     # run whatever its check said: a failure shows in the table
    if device.type == "cpu" and cpu_kernel_available():
        names.append("cpu")
    return names


def scan_agreement(device: torch.device, names: list[str]) -> dict[str, Any]:
    """Worst relative error (error / (atol + rtol·|ref|), ≤ 1 passes) of each backend against reference."""
    from ssmad.core import build
    from ssmad.ssm.bench import make_inputs

    ref = build("scan", "reference")
    out: dict[str, Any] = {}
    for name in names:
        fn = build("scan", name)
        worst = 0.0
        try:
            for case in SCAN_CASES:
                inputs = {k: v.detach().to(device).requires_grad_()
                          for k, v in make_inputs(*case, grad=False).items()}
                results = []
                for f in (ref, fn):
                    y = f(**inputs, delta_softplus=True)
                    g = torch.autograd.grad(y, list(inputs.values()), torch.ones_like(y))
                    results.append([y, *g])
                for a, b in zip(results[1], results[0]):
                    worst = max(worst, ((a - b).abs() / (ATOL + RTOL * b.abs())).max().item())
        except Exception as exc:  # e.g. a kernel that does not compile on this GPU: reported, the rest still runs
            out[name] = {"worst_ratio": float("nan"), "pass": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        out[name] = {"worst_ratio": worst, "pass": worst <= 1.0}
    return out


def _time_scan(fn, shape, device: torch.device, repeats: int) -> dict[str, float]:
    from ssmad.ssm.bench import make_inputs

    fwd_in = {k: v.to(device) for k, v in make_inputs(*shape, grad=False).items()}
    bwd_in = {k: v.detach().to(device).requires_grad_() for k, v in make_inputs(*shape, grad=False).items()}

    def forward():
        with torch.no_grad():
            fn(**fwd_in, delta_softplus=True)

    def forward_backward():
        for v in bwd_in.values():
            v.grad = None
        fn(**bwd_in, delta_softplus=True).sum().backward()

    return {"forward_ms": _best(forward, device, repeats) * 1e3,
            "forward_backward_ms": _best(forward_backward, device, max(1, repeats // 2)) * 1e3}


def scan_speed(device: torch.device, names: list[str], repeats: int, shape=ALMRR_SHAPE) -> dict[str, Any]:
    from ssmad.core import build

    out = {name: _time_scan(build("scan", name), shape, device, repeats) for name in ["reference", *names]}
    ref = out["reference"]
    for name in names:
        out[name]["forward_speedup"] = ref["forward_ms"] / out[name]["forward_ms"]
        out[name]["forward_backward_speedup"] = ref["forward_backward_ms"] / out[name]["forward_backward_ms"]
    return out


def _method(app: str, device: torch.device, quick: bool):
    import importlib

    the_app = importlib.import_module(f"apps.{app}").APP
    over = ['pipeline.backbone.weights="none"'] if app == "almrr" else []
    config = the_app.config("smoke" if quick else None, over)
    return the_app.method_cls(config, device), config


def app_throughput(app: str, device: torch.device, repeats: int, quick: bool) -> dict[str, Any]:
    method, config = _method(app, device, quick)
    size = int(config["data"]["image_size"])
    batch = int(config["train"]["batch_size"])
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g).to(device)

    if app == "almrr":
        train_batch = {"clean": rand(batch, 3, size, size), "anomalous": rand(batch, 3, size, size),
                       "mask": (rand(batch, 1, size, size) > 0.9).float()}
    else:
        train_batch = {"image": rand(batch, 3, size, size)}
    optimizer = method.make_optimizer()
    method.train(True)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        method.train_step(train_batch)["loss"].backward()
        optimizer.step()

    t_train = _best(train_step, device, max(2, repeats // 2))
    method.train(False)
    method.after_training(list(rand(2, 3, size, size)))   # normalisation statistics (values do not change the cost)
    out: dict[str, Any] = {"image_size": size, "train_batch": batch, "train_images_per_s": batch / t_train}
    for infer_batch in (1, 4 if quick else 32):
        images = rand(infer_batch, 3, size, size)
        t = _best(lambda images=images: method.predict(images), device, repeats)
        out[f"infer_b{infer_batch}_images_per_s"] = infer_batch / t
        if infer_batch == 1:
            out["latency_b1_ms"] = t * 1e3
    out["parameters_m"] = sum(p.numel() for p in method.parameters()) / 1e6
    return out


def triton_settings(device: torch.device, repeats: int, shape=ALMRR_SHAPE) -> list[dict[str, Any]]:
    """The ``triton`` backend's forward+backward time at ``shape`` for each launch setting (channels per program ×
    warps), to choose the defaults of ``ssmad.ssm.triton_scan`` on a real GPU; each setting is first checked
    against ``reference`` on the agreement cases (SCAN_CASES) and timed only when it agrees."""
    from ssmad.ssm import triton_scan

    saved = triton_scan.BLOCK_D, triton_scan.NUM_WARPS
    rows = []
    try:
        for block_d in (4, 8, 16, 32):
            for warps in (1, 2, 4):
                triton_scan.BLOCK_D, triton_scan.NUM_WARPS = block_d, warps
                row: dict[str, Any] = {"block_d": block_d, "num_warps": warps}
                try:
                    agree = scan_agreement(device, ["triton"])["triton"]
                    row["pass"] = agree["pass"]
                    if agree["pass"]:
                        row.update(_time_scan(triton_scan.selective_scan_triton, shape, device, repeats))
                    else:
                        row["error"] = agree.get("error", f"worst error / tolerance {agree['worst_ratio']:.3g}")
                except Exception as exc:
                    row.update({"pass": False, "error": f"{type(exc).__name__}: {exc}"[:200]})
                rows.append(row)
    finally:
        triton_scan.BLOCK_D, triton_scan.NUM_WARPS = saved
    return rows


def torchrun_epoch(device: torch.device) -> dict[str, Any]:
    """One smoke-preset epoch of ALMRR under ``torchrun --nproc-per-node 1`` on ``device``: exit code, backend,
    seconds (the last lines of its output when it fails)."""
    import re
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                            "-m", "apps.almrr", "train", "--preset", "smoke", "--device", device.type, "--no-test",
                            "--out", str(Path(tmp) / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600)
        found = re.search(r"distributed: \d+ process\(es\), backend (\w+)", p.stdout)
        res = {"exit_code": p.returncode, "backend": found.group(1) if found else "none",
               "seconds": round(time.perf_counter() - t0, 1)}
        if p.returncode != 0:
            res["error"] = (p.stdout + p.stderr)[-600:]
        return res


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = ["# GPU checks (scripts/gpu_checks.py)", "",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             "## Selective scan against `reference` on the device", "",
             "| backend | worst error / tolerance | agrees |", "|---|---:|---|"]
    for name, r in res.get("scan_agreement", {}).items():
        lines.append(f"| {name} | {r['worst_ratio']:.3f} | {'yes' if r['pass'] else 'NO'} |"
                     + (f" {r['error']}" if "error" in r else ""))
    lines += ["", f"Time at B, D, L, N = {tuple(res['scan_shape'])}:", "",
              "| backend | forward ms | speed-up | forward+backward ms | speed-up |", "|---|---:|---:|---:|---:|"]
    for name, r in res.get("scan_speed", {}).items():
        lines.append(f"| {name} | {r['forward_ms']:.2f} | {r.get('forward_speedup', 1.0):.1f}× | "
                     f"{r['forward_backward_ms']:.2f} | {r.get('forward_backward_speedup', 1.0):.1f}× |")
    if res.get("triton_settings"):
        lines += ["", "`triton` launch settings (ssmad.ssm.triton_scan.BLOCK_D, NUM_WARPS):", "",
                  "| channels per program | warps | agrees | forward ms | forward+backward ms |",
                  "|---:|---:|---|---:|---:|"]
        for r in res["triton_settings"]:
            times = (f"{r['forward_ms']:.2f} | {r['forward_backward_ms']:.2f}" if r["pass"]
                     else f"{r.get('error', '')} | ")
            lines.append(f"| {r['block_d']} | {r['num_warps']} | {'yes' if r['pass'] else 'NO'} | {times} |")
    if "torchrun" in res:
        t = res["torchrun"]
        lines += ["", "## torchrun --nproc-per-node 1, one smoke epoch of ALMRR", "",
                  f"exit code {t['exit_code']}, backend {t['backend']}, {t['seconds']} s"
                  + (f"; output: {t['error']}" if "error" in t else "")]
    lines += ["", "## Apps, paper configurations" + (" (--quick: smoke presets)" if res["quick"] else ""), "",
              "| app | image | params (M) | train batch | train images/s | infer images/s b1 | infer images/s "
              "large batch | latency b1 (ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for app, r in res.get("apps", {}).items():
        if "error" in r:
            lines.append(f"| {app} | failed: {r['error']} |")
            continue
        big = next(v for k, v in r.items() if k.startswith("infer_b") and not k.startswith("infer_b1_"))
        lines.append(f"| {app} | {r['image_size']} | {r['parameters_m']:.1f} | {r['train_batch']} | "
                     f"{r['train_images_per_s']:.1f} | {r['infer_b1_images_per_s']:.1f} | {big:.1f} | "
                     f"{r['latency_b1_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_checks.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_checks.json and gpu_checks.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smoke presets, small scan shape (a test on a CPU)")
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available here")
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    names = scan_backends(device)
    shape = (2, 64, 64, 16) if args.quick else ALMRR_SHAPE
    res: dict[str, Any] = {"quick": args.quick, "scan_shape": shape, "environment": environment(device)}

    def save() -> None:       # after every part: a run stopped at its time limit still leaves what it measured
        (out / "gpu_checks.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "gpu_checks.md").write_text(markdown(res))

    save()
    res["scan_agreement"] = agreement = scan_agreement(device, names)
    save()
    res["scan_speed"] = scan_speed(device, [n for n in names if agreement[n]["pass"]], args.repeats, shape)
    save()
    res["torchrun"] = torchrun_epoch(device)
    save()
    res["apps"] = {}
    for app in ("almrr", "vmpfd"):
        try:
            res["apps"][app] = app_throughput(app, device, args.repeats, args.quick)
        except Exception as exc:     # one app failing on the device must not cost the other's figures
            res["apps"][app] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        save()
    res["triton_settings"] = triton_settings(device, args.repeats, shape) if "triton" in names else []
    save()
    print(markdown(res))
    ok = all(r["pass"] for r in agreement.values()) and not any("error" in r for r in res["apps"].values())
    return 0 if ok and res["torchrun"]["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
