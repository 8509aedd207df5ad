"""The compiled CPU scan: building and caching, falling back when it cannot build, threads, exp range, NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmad.ssm import cpu_kernel as ck
from ssmad.ssm import cpu_kernel_available, cpu_kernel_status, selective_scan_cpu, selective_scan_reference

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason=f"CPU scan kernel {cpu_kernel_status()}")

PROBE = """
import json, torch
from ssmad.core import build
from ssmad.ssm import cpu_kernel_status
from ssmad.ssm.cpu_kernel import _state
u = torch.randn(1, 2, 5)
auto = build("scan", "auto")
out = {"status": cpu_kernel_status(), "auto": auto.backend_for(u)}
try:
    build("scan", "cpu")(u, torch.rand(1, 2, 5), -torch.rand(2, 3), torch.randn(1, 3, 5), torch.randn(1, 3, 5))
    out["cpu"] = "ran"
except RuntimeError as exc:
    out["cpu"] = str(exc)
print(json.dumps(out))
"""


def probe(tmp_path: Path, **env: str) -> dict:
    full = dict(os.environ, SSMAD_KERNEL_CACHE=str(tmp_path / "cache"), **env)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_switched_off_falls_back_to_torch(tmp_path):
    out = probe(tmp_path, SSMAD_CPU_KERNEL="0")
    assert out["status"] == "unavailable: turned off by SSMAD_CPU_KERNEL=0"
    assert out["auto"] == "torch"
    assert "selective scan 'cpu'" in out["cpu"] and "SSMAD_CPU_KERNEL=0" in out["cpu"]
    assert not (tmp_path / "cache").exists()


def test_failing_compiler_falls_back_with_the_reason(tmp_path):
    fake = tmp_path / "broken-c++"
    fake.write_text("#!/bin/sh\necho 'fatal error: this compiler is broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = probe(tmp_path, CXX=str(fake))
    assert out["status"].startswith("unavailable: compiling selective_scan_cpu.cpp")
    assert "this compiler is broken" in out["status"]
    assert out["auto"] == "torch"
    assert "use 'torch' or 'auto'" in out["cpu"]
    assert list((tmp_path / "cache").glob("*")) == []              # no half-written library left behind


@needs_kernel
def test_built_once_then_loaded_from_the_cache(tmp_path):
    first = probe(tmp_path)
    assert first["status"].startswith("available") and (first["auto"], first["cpu"]) == ("cpu", "ran")
    libs = list((tmp_path / "cache").glob("selective_scan_cpu-*.so"))
    assert len(libs) == 1
    inode = libs[0].stat().st_ino
    assert probe(tmp_path) == first
    assert [p.stat().st_ino for p in (tmp_path / "cache").glob("*.so")] == [inode]  # loaded, not built again


@needs_kernel
def test_a_flag_set_that_failed_is_not_retried_and_stale_builds_are_pruned(tmp_path):
    """A compiler without OpenMP: the first process notes the failed -fopenmp set once a later set builds; the next
    process goes straight to the working build. A fresh build removes cache files unused for 30 days."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "no-openmp-c++"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase " $* " in *" -fopenmp "*) '
                    f'echo "fatal error: omp.h: not here" >&2; exit 1;; esac\nexec {ck._compiler()} "$@"\n')
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, fresh = cache / "selective_scan_cpu-0000old.so", cache / "selective_scan_cpu-0000new.failed"
    stale.write_text("")
    fresh.write_text("")
    month_ago = stale.stat().st_mtime - 31 * 86400
    os.utime(stale, (month_ago, month_ago))

    first = probe(tmp_path, CXX=str(fake))
    assert first["status"].startswith("available") and first["cpu"] == "ran"
    assert first["status"] == "available (Python threads)"
    assert len(list(cache.glob("*.failed"))) == 2  # the -fopenmp set's note, and the recent unrelated one
    assert not stale.exists() and fresh.exists()
    assert probe(tmp_path, CXX=str(fake)) == first
    compiles = [line for line in log.read_text().splitlines() if "--version" not in line]
    assert sum(" -fopenmp " in f" {line} " for line in compiles) == 1  # tried by the first process only
    assert len(compiles) == 2                                            # -fopenmp failed, -fopenmp-simd built


def _inputs(d: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"u": torch.randn(3, d, 40, generator=g), "delta": torch.rand(3, d, 40, generator=g),
            "A": -torch.rand(d, 8, generator=g), "B": torch.randn(3, 8, 40, generator=g),
            "C": torch.randn(3, 8, 40, generator=g), "D": torch.randn(d, generator=g),
            "z": torch.randn(3, d, 40, generator=g), "delta_bias": torch.rand(d, generator=g)}


@needs_kernel
@pytest.mark.parametrize("own_threads", [False, True], ids=["as-built", "python-threads"])
@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_any_thread_count_gives_the_same_result(threads, own_threads, monkeypatch):
    """Channels are split into ranges per thread and ∂B, ∂C summed over per-range accumulators; the same whether
    the kernel threads itself (OpenMP) or is called once per range from a Python thread pool."""
    if own_threads:
        fns = {k: (f, b, False) for k, (f, b, _) in ck._load().items()}
        monkeypatch.setitem(ck._state, "fns", fns)
    saved = torch.get_num_threads()
    grads = {}
    for n in (1, threads):
        torch.set_num_threads(n)
        try:
            inputs = {k: v.clone().requires_grad_() for k, v in _inputs(d=5).items()}
            out = selective_scan_cpu(**inputs, delta_softplus=True)
            out.backward(torch.ones_like(out))
            grads[n] = [out.detach()] + [v.grad for v in inputs.values()]
        finally:
            torch.set_num_threads(saved)
    for a, b in zip(grads[1], grads[threads]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@needs_kernel
def test_exp_over_its_whole_range():
    """Decays exp(Δ·A) from underflow to growth (A > 0): the kernel's polynomial exp agrees with torch.exp."""
    d = 6
    inputs = _inputs(d, seed=1)
    inputs["A"] = torch.tensor([-200.0, -80.0, -5.0, -0.01, 0.0, 0.3]).repeat(8, 1).t().contiguous()
    inputs["delta"] = torch.rand(3, d, 40) * 1.5
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    ref = selective_scan_reference(**inputs)
    out = selective_scan_cpu(**inputs)
    scale = ref.abs().amax(-1, keepdim=True).clamp_min(1.0)      # the growing channel reaches ~1e4
    torch.testing.assert_close(out / scale, ref / scale, rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad(ref.sum(), inputs["A"])[0]
    g_out = torch.autograd.grad(out.sum(), inputs["A"])[0]
    torch.testing.assert_close(g_out, g_ref, rtol=1e-4, atol=1e-3 * g_ref.abs().max().item())


@needs_kernel
def test_nan_is_not_hidden():
    """A NaN in A (through the decay only) reaches the output, so a training loop sees it."""
    inputs = _inputs(4, seed=2)
    inputs["A"][1, 3] = float("nan")
    out = selective_scan_cpu(**inputs)
    assert torch.isnan(out[:, 1]).all() and torch.isfinite(out[:, [0, 2, 3]]).all()


@needs_kernel
def test_scratch_allocation_failure_is_a_memory_error_not_an_abort():
    """The backward's per-thread scratch grows with L·N; when it cannot be allocated the kernel reports it (a C++
    exception crossing into Python would abort the process) and the caller raises MemoryError."""
    _, bwd, openmp = ck._load()[torch.float32]
    small = torch.zeros(16)
    ptrs = [small.data_ptr()] * 18
    with pytest.raises(MemoryError, match=r"selective scan 'cpu': out of memory .*L=1099511627776, N=16"):
        ck._run(bwd, openmp, 1, *ptrs, 1, 1, 1, 2 ** 40, 16)     # softplus, then B, D, L, N


@needs_kernel
def test_fused_softplus_and_gate_over_their_whole_range():
    """With A = 0 and B = C = u = 1 a one-step scan returns Δ = softplus(δ) itself, gated by silu(z): the kernel's
    own softplus and sigmoid (vectorised series, not libm) agree with torch's from -90 to 90, and so do their
    gradients, to 1e-5 relative (as the decays: exp by 2^(x·log2 e) loses an ulp of x·log2 e, ~4e-6 at |x| = 90)."""
    x = torch.linspace(-90, 90, 2001, dtype=torch.float32)
    d = len(x)
    one = torch.ones(1, d, 1)
    inputs = {"u": one, "delta": x.view(1, d, 1).clone().requires_grad_(), "A": torch.zeros(d, 1),
              "B": torch.ones(1, 1, 1), "C": torch.ones(1, 1, 1), "z": None}
    out = selective_scan_cpu(**inputs, delta_softplus=True)
    ref = torch.nn.functional.softplus(x)
    torch.testing.assert_close(out.flatten(), ref, rtol=1e-5, atol=1e-30)
    (g,) = torch.autograd.grad(out.sum(), inputs["delta"])
    torch.testing.assert_close(g.flatten(), torch.sigmoid(x), rtol=1e-5, atol=1e-30)
    z = x.view(1, d, 1).clone().requires_grad_()
    gated = selective_scan_cpu(**{**inputs, "delta": torch.ones(1, d, 1), "z": z})
    torch.testing.assert_close(gated.flatten(), torch.nn.functional.silu(x), rtol=1e-5, atol=1e-30)
    (gz,) = torch.autograd.grad(gated.sum(), z)
    s = torch.sigmoid(x)
    torch.testing.assert_close(gz.flatten(), s * (1 + x * (1 - s)), rtol=1e-5, atol=1e-30)
