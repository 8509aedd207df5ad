"""The selective scan as a small compiled CPU kernel (``scan``/``cpu``), built on first use.

``csrc/selective_scan_cpu.cpp`` holds the forward and the adjoint (backward) recurrence, one channel at a time
with the N states in cache, with Δ's bias and softplus, the D·u skip and the silu gate fused into them (and their
gradients: one pass over the tensors each way, not one per elementwise step); this module compiles it with the
system's C++ compiler into a plain shared library (no Python or torch headers: it builds in a second or two),
loads it with ``ctypes`` and wraps it in an autograd
function. Work is split over channel ranges run on ``torch.get_num_threads()`` threads: by OpenMP inside the
kernel where the compiler has it (PyTorch's own OpenMP runtime, already loaded, whose threads are warm), else by a
small Python thread pool (ctypes releases the GIL during the call). The library is cached in
``$SSMAD_KERNEL_CACHE`` (default ``~/.cache/ssmad/kernels``) under a name derived from the source, the compiler,
the flags and the CPU, so an edited source or another CPU builds it again; a flag set that failed where a later
one built is noted there and not tried again, and builds unused for 30 days are removed. Delete the folder to
retry everything.

``SSMAD_CPU_KERNEL=0`` turns the kernel off: ``auto`` then uses the pure-PyTorch ``torch`` backend on the CPU, as
it does when no compiler is found or the build fails (:func:`cpu_kernel_status` says why).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ssmad.core import ConfigError

from .ops import _check, _compute_dtype

__all__ = ["cpu_kernel_available", "cpu_kernel_status", "selective_scan_cpu"]

ENV_SWITCH = "SSMAD_CPU_KERNEL"
ENV_CACHE = "SSMAD_KERNEL_CACHE"
SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
_ABI_VERSION = 4
_COMMON_FLAGS = ["-shared", "-fPIC", "-std=c++17", "-fno-math-errno"]
# tried in order: the first set that compiles is used
_FLAG_SETS = [["-O3", "-march=native", "-fopenmp"], ["-O3", "-march=native", "-fopenmp-simd"],
              ["-O3", "-fopenmp-simd"], ["-O2"]]
_PRUNE_DAYS = 30

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssmad" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where /proc tells them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    """Compile the kernel (or find it already compiled); returns the library's path, raises with the reason.

    Flag sets are tried in order. When a set fails but a later one builds, the failure is remembered in the cache
    (``*.failed``, keyed like the library), so later processes skip straight to the set that works; when every set
    fails nothing is remembered and the next process tries again. A fresh build also removes cached builds and
    failure notes not used for :data:`_PRUNE_DAYS` days (loading a library marks it used).
    """
    source = SOURCE.read_bytes()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"C++ compiler {compiler!r} does not run: {exc}") from None
    folder = _cache_dir()
    errors, failed = [], []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), version.encode(), " ".join(flags).encode(),
                                         _cpu_signature().encode(), platform.machine().encode()])).hexdigest()[:20]
        lib = folder / f"selective_scan_cpu-{key}.so"
        if lib.is_file():
            _touch(lib)
            return lib
        if (note := lib.with_suffix(".failed")).is_file():
            _touch(note)  # in use (it saves a failing compile), like a loaded library: not pruned
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(f"cannot create the kernel cache {folder} ({exc}); set {ENV_CACHE}") from None
        fd, tmp = tempfile.mkstemp(prefix=lib.stem + ".", suffix=".tmp", dir=folder)
        os.close(fd)
        cmd = [compiler, *flags, *_COMMON_FLAGS, str(SOURCE), "-o", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                os.replace(tmp, lib)                # atomic: a concurrent build of the same key is harmless
                for note, text in failed:           # this set works: the ones before it need not be tried again
                    _write_quietly(note, text)
                _prune(folder)
                return lib
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            errors.append(f"{' '.join(flags)}: {last}")
            failed.append((lib.with_suffix(".failed"), f"{' '.join(cmd)}\n{proc.stderr}"))
        except (OSError, subprocess.SubprocessError) as exc:  # a timeout or a vanished compiler: not remembered
            errors.append(f"{' '.join(flags)}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"compiling {SOURCE.name} with {compiler!r} failed: " + "; ".join(errors))


def _touch(path: Path) -> None:
    """Mark a cached library or failure note as used (its modification time), where the cache is writable."""
    try:
        os.utime(path)
    except OSError:
        pass


def _write_quietly(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def _prune(folder: Path) -> None:
    """Remove cached builds and failure notes unused for :data:`_PRUNE_DAYS` days (older sources, compilers)."""
    cutoff = time.time() - _PRUNE_DAYS * 86400
    for path in folder.glob("selective_scan_cpu-*"):
        try:
            if path.suffix in (".so", ".failed") and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass


def _bind(lib: ctypes.CDLL) -> dict[torch.dtype, tuple]:
    """The kernel's entry points by dtype: (forward, backward, whether it threads itself)."""
    p, i = ctypes.c_void_p, ctypes.c_int64
    if lib.ssmad_scan_abi_version() != _ABI_VERSION:
        raise RuntimeError("the cached kernel library has another ABI version")
    openmp = bool(lib.ssmad_scan_openmp())
    fns = {}
    for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
        fwd = getattr(lib, f"ssmad_scan_forward_{suffix}")
        fwd.argtypes = [p] * 10 + [i] * 8
        fwd.restype = ctypes.c_int
        bwd = getattr(lib, f"ssmad_scan_backward_{suffix}")
        bwd.argtypes = [p] * 18 + [i] * 8
        bwd.restype = ctypes.c_int
        fns[dtype] = (fwd, bwd, openmp)
    return fns


def _load() -> dict[torch.dtype, tuple] | None:
    """The kernel's functions by dtype, or None (the reason in ``_state['why']``); built once per process."""
    if "fns" in _state:        # every scan call asks: no lock once it is settled (set once, under the lock)
        return _state["fns"]  # type: ignore[return-value]
    with _lock:
        if "fns" in _state:
            return _state["fns"]  # type: ignore[return-value]
        fns, why = None, ""
        if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
            why = f"turned off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
        elif sys.platform == "win32":
            why = "not built on Windows"
        elif (compiler := _compiler()) is None:
            why = "no C++ compiler found (install g++ or clang++, or set CXX)"
        else:
            try:
                fns = _bind(ctypes.CDLL(str(_build(compiler))))
            except (RuntimeError, OSError, AttributeError) as exc:
                why = str(exc)
        _state["fns"], _state["why"] = fns, why
        return fns


def cpu_kernel_available() -> bool:
    """True when the compiled CPU scan is usable (compiling it now if it has not been built yet)."""
    return _load() is not None


def cpu_kernel_status() -> str:
    """One line: whether the kernel is usable (and how it threads), or why it is not."""
    fns = _load()
    if fns is None:
        return f"unavailable: {_state['why']}"
    return "available (OpenMP threads)" if fns[torch.float32][2] else "available (Python threads)"


def _pool(workers: int) -> ThreadPoolExecutor:
    key = f"pool{workers}"
    pool = _state.get(key)
    if pool is None:
        pool = _state[key] = ThreadPoolExecutor(workers, thread_name_prefix="ssmad-scan")
    return pool  # type: ignore[return-value]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _parts(d: int) -> int:
    """How many channel ranges (threads) a call over ``d`` channels runs on."""
    return max(1, min(torch.get_num_threads(), d))


def _run(fn, openmp: bool, parts: int, *args) -> None:
    """``fn(*args, parts, k0, k1)`` over the ranges 0..parts-1: in one call when the kernel threads itself (OpenMP),
    else one call per range on a thread pool. ``args`` ends with (B, D, L, N)."""
    if openmp or parts == 1:
        failed = fn(*args, parts, 0, parts)
    else:
        futures = [_pool(parts).submit(fn, *args, parts, k, k + 1) for k in range(parts)]
        failed = sum(f.result() for f in futures)
    if failed:
        length, n = args[-2], args[-1]
        raise MemoryError(f"selective scan 'cpu': out of memory for the kernel's scratch space (L={length}, N={n}: "
                          f"up to {8 * (2 * length + 1) * n} bytes per thread)")


class _CpuScan(torch.autograd.Function):
    """The whole selective scan in the compiled kernel (float32 or float64 arithmetic; inputs of other dtypes are
    cast, outputs and gradients come back in the inputs' dtypes), channel ranges on ``torch.get_num_threads()``
    threads. Saved for backward: the inputs in the arithmetic's dtype; the kernel recomputes the rest."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        ct = _compute_dtype(u)
        fwd, _, openmp = _load()[ct]  # type: ignore[index]

        def prep(t):
            return None if t is None else t.to(ct).contiguous()

        u_c, d_c, z_c, a_c, dv, bias = prep(u), prep(delta), prep(z), prep(A), prep(D), prep(delta_bias)
        b_t = B.to(ct).transpose(1, 2).contiguous()                    # B×L×N
        c_t = C.to(ct).transpose(1, 2).contiguous()
        nb, nd, length = u.shape
        n = A.shape[1]
        out = torch.empty_like(u_c)
        last = u_c.new_empty(nb, nd, n) if return_last_state else None
        _run(fwd, openmp, _parts(nd), _ptr(u_c), _ptr(d_c), _ptr(bias), _ptr(dv), _ptr(z_c), _ptr(a_c), _ptr(b_t),
             _ptr(c_t), _ptr(out), _ptr(last), int(delta_softplus), nb, nd, length, n)
        ctx.save_for_backward(u_c, d_c, z_c, a_c, dv, bias, b_t, c_t)
        # each input's dtype (None where absent): its gradient's
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias))
        ctx.delta_softplus = bool(delta_softplus)
        out = out.to(u.dtype)
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, gout, glast=None):
        u_c, d_c, z_c, a_c, dv, bias, b_t, c_t = ctx.saved_tensors
        _, bwd, openmp = _load()[u_c.dtype]  # type: ignore[index]
        nb, nd, length = u_c.shape
        n = a_c.shape[1]
        parts = _parts(nd)
        go = gout.to(u_c.dtype).contiguous()
        glast = None if glast is None else glast.to(u_c.dtype).contiguous()
        g_u, g_delta = torch.empty_like(u_c), torch.empty_like(u_c)
        g_z = torch.empty_like(u_c) if z_c is not None else None
        g_a = u_c.new_zeros(nd, n)
        g_b = u_c.new_zeros(parts, nb, length, n)                     # one accumulator per channel range
        g_c = u_c.new_zeros(parts, nb, length, n)
        g_d = u_c.new_empty(nd) if dv is not None else None
        g_bias = u_c.new_empty(nd) if bias is not None else None
        _run(bwd, openmp, parts, _ptr(u_c), _ptr(d_c), _ptr(bias), _ptr(dv), _ptr(z_c), _ptr(a_c), _ptr(b_t),
             _ptr(c_t), _ptr(go), _ptr(glast), _ptr(g_u), _ptr(g_delta), _ptr(g_z), _ptr(g_a), _ptr(g_b),
             _ptr(g_c), _ptr(g_d), _ptr(g_bias), int(ctx.delta_softplus), nb, nd, length, n)
        grads = (g_u, g_delta, g_a, g_b.sum(0).transpose(1, 2), g_c.sum(0).transpose(1, 2), g_d, g_z, g_bias)
        return (*(None if g is None or dt is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes, strict=True)),
                None, None)


def selective_scan_cpu(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False):
    """The selective scan by the compiled CPU kernel (CPU tensors; builds the kernel on first use)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cpu":
        raise ConfigError(f"selective scan 'cpu': needs CPU tensors, got {u.device} (use 'auto')")
    if _load() is None:
        raise RuntimeError(f"selective scan 'cpu': the compiled kernel is {cpu_kernel_status()} "
                           "(use 'torch' or 'auto', which fall back to pure PyTorch)")
    return _CpuScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state))
