"""Side-by-side speed and memory of the ``reference``, ``torch`` and compiled ``cpu`` selective scans.

    python -m ssmad.ssm.bench [--shape B D L N] [--repeats 7] [--threads N] [--no-memory]

Time: the minimum over ``--repeats`` interleaved runs (reference, torch, cpu, reference, ...) of the forward (under
``torch.no_grad``) and of forward + backward (all eight inputs require grad), after one warm-up run each. The clock
is wall time, except with one torch thread, where it is the thread's CPU time (``time.thread_time``), which other
processes competing for the cores do not inflate.
Peak memory: each (backend, mode) runs in a fresh subprocess started with ``MALLOC_MMAP_THRESHOLD_=4096``, so
that glibc maps every tensor buffer on its own and unmaps it when freed: the resident set size then follows the
live tensors instead of the allocator's cached heap. The child runs the call once (warm-up: one-time library
initialisation is left out), resets its peak RSS (writing 5 to ``/proc/self/clear_refs``), runs it again and
reports ``VmHWM - VmRSS`` (``/proc/self/status``): the peak rise of resident memory during one call, including
what autograd keeps, temporaries and workspace. Where ``/proc`` lacks these it falls back to the rise of
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` over a first call (which also counts one-time initialisation).
The defaults are the ALMRR shape (batch 4, d_inner 384, 256 tokens, d_state 16), CPU. ``cpu`` is left out, with
the reason printed, where its kernel does not build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from .cpu_kernel import cpu_kernel_available, cpu_kernel_status, selective_scan_cpu
from .scan import selective_scan_reference, selective_scan_torch

BACKENDS = {"reference": selective_scan_reference, "torch": selective_scan_torch, "cpu": selective_scan_cpu}


def make_inputs(b: int, d: int, length: int, n: int, grad: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs shaped and scaled like a ViM mixer's (softplus Δ around 0.01–0.1, A = -(1..N))."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "u": torch.randn(b, d, length, generator=g),
        "delta": torch.randn(b, d, length, generator=g) * 0.5,
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        "B": torch.randn(b, n, length, generator=g),
        "C": torch.randn(b, n, length, generator=g),
        "D": torch.ones(d),
        "z": torch.randn(b, d, length, generator=g),
        "delta_bias": torch.full((d,), -3.0) + torch.rand(d, generator=g) * 2,
    }
    return {k: v.requires_grad_(grad) for k, v in t.items()}


def run_once(name: str, mode: str, inputs: dict[str, torch.Tensor]) -> None:
    fn = BACKENDS[name]
    if mode == "forward":
        with torch.no_grad():
            fn(**inputs, delta_softplus=True)
    else:
        for v in inputs.values():
            v.grad = None
        fn(**inputs, delta_softplus=True).sum().backward()


def time_all(shape: tuple[int, int, int, int], repeats: int, names: list[str]) -> dict[tuple[str, str], float]:
    inputs = {mode: make_inputs(*shape, grad=mode == "forward+backward") for mode in ("forward", "forward+backward")}
    times: dict[tuple[str, str], list[float]] = {}
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    for name in names:
        for mode in inputs:
            run_once(name, mode, inputs[mode])                         # warm-up
    for _ in range(repeats):
        for mode in inputs:
            for name in names:
                t0 = clock()
                run_once(name, mode, inputs[mode])
                times.setdefault((name, mode), []).append(clock() - t0)
    return {k: min(v) for k, v in times.items()}


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(name: str, mode: str, shape: tuple[int, int, int, int], threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    inputs = make_inputs(*shape, grad=mode == "forward+backward")
    if _status_kib("VmHWM") is not None and _reset_peak():
        run_once(name, mode, inputs)      # warm-up: one-time library initialisation is not the call's memory
        _reset_peak()
        before = _status_kib("VmRSS") or 0
        run_once(name, mode, inputs)
        after = _status_kib("VmHWM") or 0
    else:  # without clear_refs a warm-up's peak could not be told apart: measure the process's first call
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_once(name, mode, inputs)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": after - before}))


def peak_memory(name: str, mode: str, shape: tuple[int, int, int, int], threads: int | None) -> float:
    """Rise of the peak RSS (MiB) of a fresh process running one call."""
    cmd = [sys.executable, "-m", "ssmad.ssm.bench", "--child", name, mode, "--shape", *map(str, shape)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_kib"] / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssmad.ssm.bench", description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs=4, type=int, metavar=("B", "D", "L", "N"), default=(4, 384, 256, 16))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--child", nargs=2, metavar=("BACKEND", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shape = tuple(args.shape)
    if args.child:
        _child(args.child[0], args.child[1], shape, args.threads)  # type: ignore[arg-type]
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    b, d, length, n = shape
    clock = "thread CPU time" if torch.get_num_threads() == 1 else "wall time"
    print(f"selective scan, B={b} D={d} L={length} N={n}, float32, CPU, {torch.get_num_threads()} threads "
          f"({clock}), torch {torch.__version__}")
    names = ["reference", "torch"]
    if cpu_kernel_available():
        names.append("cpu")
    else:
        print(f"(cpu backend left out: kernel {cpu_kernel_status()})")
    times = time_all(shape, args.repeats, names)  # type: ignore[arg-type]
    bars = {"forward": 3.0, "forward+backward": 10.0}
    fast = names[1:]
    print(f"{'mode':18s} " + " ".join(f"{k:>10s}" for k in names) + "   speed-up over reference   bar")
    for mode, bar in bars.items():
        r = times[("reference", mode)]
        ups = {k: r / times[(k, mode)] for k in fast}
        print(f"{mode:18s} " + " ".join(f"{times[(k, mode)] * 1e3:8.1f}ms" for k in names) + "   "
              + "  ".join(f"{k} {v:4.1f}×" for k, v in ups.items()) + f"   ≥{bar:.0f}×: "
              + ", ".join(f"{k} {'met' if v >= bar else 'NOT met'}" for k, v in ups.items()))
    if not args.no_memory:
        print(f"{'peak memory rise':18s} " + " ".join(f"{k:>10s}" for k in names) + "   ratio to reference   bar")
        for mode in bars:
            mem = {k: peak_memory(k, mode, shape, args.threads) for k in names}  # type: ignore[arg-type]
            r = max(mem["reference"], 1e-9)
            print(f"{mode:18s} " + " ".join(f"{mem[k]:7.1f}MiB" for k in names) + "   "
                  + "  ".join(f"{k} {mem[k] / r:4.2f}×" for k in fast) + "   ≤1×: "
                  + ", ".join(f"{k} {'met' if mem[k] <= mem['reference'] else 'NOT met'}" for k in fast))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
