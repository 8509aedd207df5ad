"""The selective scan as two Triton kernels (``scan``/``triton``): one launch per scan on a CUDA GPU, no build step.

For CUDA machines without ``mamba_ssm`` (which needs a matching CUDA toolkit to build): the pure-PyTorch ``torch``
backend launches a few kernels per time step there, hundreds per scan, while Triton ships with PyTorch's CUDA
wheels and compiles these two kernels on first use (cached by Triton).

Each program of the grid (batch × blocks of ``BLOCK_D`` channels) runs its channels' recurrence over the whole
sequence with the N states in registers:

- forward: h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, y_t = C_t·h_t, one step at a time;
- backward: the states again (written to a scratch buffer of B×D×L×N floats, freed after the call: nothing but the
  inputs is kept between forward and backward), then the adjoint λ_t = exp(Δ_{t+1} A) λ_{t+1} + C_t ∂L/∂y_t from the
  last step to the first, with every gradient of the step from λ_t, h_t and h_{t-1}. Sums over channels (∂L/∂B,
  ∂L/∂C) and over the batch (∂L/∂A) are written per program and added up afterwards, so results do not depend on
  the order programs run in.

Arithmetic is float32 (float64 inputs too). ``TRITON_INTERPRET=1`` (set before the kernels are first used) runs
the same kernels on CPU tensors in Triton's interpreter: slow, for tests.

``auto`` uses this backend for CUDA tensors when ``mamba_ssm`` is not installed, after a check on each device at first
use: both kernels compile and agree with the reference loop on a small problem (a second or two, once per process);
if not, it warns once and uses ``torch`` (:func:`triton_status` says why). ``SSMAD_TRITON=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch
from torch import Tensor

from ssmad.core import ConfigError

from .ops import KernelScan, _check

__all__ = ["selective_scan_triton", "triton_available", "triton_interpreting", "triton_status", "triton_usable"]

# launch settings, read at every call (scripts/gpu_checks.py tries others): channels per program, warps per program
BLOCK_D = 16
NUM_WARPS = 4
ENV_SWITCH = "SSMAD_TRITON"
_checked: dict[str, str | None] = {}     # device → None when the kernels passed the check there, else why not


def triton_interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


try:
    import triton
    import triton.language as tl
    _IMPORT_ERROR = ""
except Exception as exc:  # not installed (CPU wheels), or a broken install
    triton = tl = None
    _IMPORT_ERROR = f"triton does not import ({type(exc).__name__}: {exc})"


@functools.cache
def _kernels():
    """(forward, backward) kernels, or the reason they are unavailable as a string. Defined at the first call, when
    ``TRITON_INTERPRET`` decides whether they compile for the GPU or run in the interpreter."""
    if triton is None:
        return _IMPORT_ERROR

    @triton.jit
    def forward(u_ptr, dl_ptr, a_ptr, b_ptr, c_ptr, y_ptr, last_ptr, n_d, length, n_state,
                STORE_LAST: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_b = tl.program_id(0).to(tl.int64)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        m_d, m_n = offs_d < n_d, offs_n < n_state
        m_dn = m_d[:, None] & m_n[None, :]
        a = tl.load(a_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=m_dn, other=0.0)
        row = (pid_b * n_d + offs_d) * length                         # u, Δ, y: B×D×L
        step = pid_b * length * n_state                               # B, C: B×L×N
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for t in range(length):
            dl = tl.load(dl_ptr + row + t, mask=m_d, other=0.0)
            u = tl.load(u_ptr + row + t, mask=m_d, other=0.0)
            b = tl.load(b_ptr + step + t * n_state + offs_n, mask=m_n, other=0.0)
            c = tl.load(c_ptr + step + t * n_state + offs_n, mask=m_n, other=0.0)
            h = tl.exp(dl[:, None] * a) * h + (dl * u)[:, None] * b[None, :]
            tl.store(y_ptr + row + t, tl.sum(h * c[None, :], axis=1), mask=m_d)
        if STORE_LAST:
            tl.store(last_ptr + (pid_b * n_d + offs_d[:, None]) * n_state + offs_n[None, :], h, mask=m_dn)

    @triton.jit
    def backward(u_ptr, dl_ptr, a_ptr, b_ptr, c_ptr, gy_ptr, glast_ptr, h_ptr, gdu_ptr, gdl_ptr, ga_ptr, gb_ptr,
                 gc_ptr, n_d, length, n_state, HAS_GLAST: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_N: tl.constexpr):
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        m_d, m_n = offs_d < n_d, offs_n < n_state
        m_dn = m_d[:, None] & m_n[None, :]
        a = tl.load(a_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=m_dn, other=0.0)
        row = (pid_b * n_d + offs_d) * length
        step = pid_b * length * n_state
        states = ((pid_b * n_d + offs_d[:, None]) * length) * n_state + offs_n[None, :]   # h: B×D×L×N, at t = 0
        # per-program sums over this block's channels: B×(D blocks)×L×N
        part = (pid_b * tl.num_programs(1) + pid_d) * length * n_state + offs_n
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for t in range(length):                                       # the states again, kept in the scratch
            dl = tl.load(dl_ptr + row + t, mask=m_d, other=0.0)
            u = tl.load(u_ptr + row + t, mask=m_d, other=0.0)
            b = tl.load(b_ptr + step + t * n_state + offs_n, mask=m_n, other=0.0)
            h = tl.exp(dl[:, None] * a) * h + (dl * u)[:, None] * b[None, :]
            tl.store(h_ptr + states + t * n_state, h, mask=m_dn)
        tl.debug_barrier()
        if HAS_GLAST:
            carry = tl.load(glast_ptr + (pid_b * n_d + offs_d[:, None]) * n_state + offs_n[None, :], mask=m_dn,
                            other=0.0)
        else:
            carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        g_a = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for i in range(length):
            t = length - 1 - i
            dl = tl.load(dl_ptr + row + t, mask=m_d, other=0.0)
            u = tl.load(u_ptr + row + t, mask=m_d, other=0.0)
            gy = tl.load(gy_ptr + row + t, mask=m_d, other=0.0)
            b = tl.load(b_ptr + step + t * n_state + offs_n, mask=m_n, other=0.0)
            c = tl.load(c_ptr + step + t * n_state + offs_n, mask=m_n, other=0.0)
            h = tl.load(h_ptr + states + t * n_state, mask=m_dn, other=0.0)
            h_prev = tl.load(h_ptr + states + (t - 1) * n_state, mask=m_dn & (t > 0), other=0.0)
            decay = tl.exp(dl[:, None] * a)
            lam = carry + gy[:, None] * c[None, :]                    # λ_t = a_{t+1} λ_{t+1} + C_t g_t
            tl.store(gdu_ptr + row + t, tl.sum(lam * b[None, :], axis=1), mask=m_d)
            tl.store(gb_ptr + part + t * n_state, tl.sum(lam * (dl * u)[:, None], axis=0), mask=m_n)
            tl.store(gc_ptr + part + t * n_state, tl.sum(h * gy[:, None], axis=0), mask=m_n)
            g_decay = lam * decay * h_prev                            # ∂L/∂(Δ_t A) elementwise
            tl.store(gdl_ptr + row + t, tl.sum(g_decay * a, axis=1), mask=m_d)
            g_a += g_decay * dl[:, None]
            carry = decay * lam
        tl.store(ga_ptr + (pid_b * n_d + offs_d[:, None]) * n_state + offs_n[None, :], g_a, mask=m_dn)

    return forward, backward


def runs_on(device: torch.device) -> bool:
    """Whether the kernels run on tensors of ``device``: CUDA, or the CPU in Triton's interpreter."""
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())


def triton_available() -> bool:
    """True when Triton imports (its kernels then run on CUDA tensors, or on CPU ones in the interpreter)."""
    return not isinstance(_kernels(), str)


def _why_not(device: torch.device) -> str | None:
    """None when the kernels are usable on ``device`` (checked there once), else why not."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return f"turned off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    kernels = _kernels()
    if isinstance(kernels, str):
        return kernels
    if not runs_on(device):
        return f"runs on CUDA devices only, not {device.type}"
    key = str(device)
    if key not in _checked:
        _checked[key] = why = _check_on(device)
        if why is not None:
            warnings.warn(f"selective scan: the Triton kernels are not used on {device} ({why}); 'auto' uses the "
                          f"slower 'torch' backend there", RuntimeWarning, stacklevel=3)
    return _checked[key]


def _check_on(device: torch.device) -> str | None:
    """Run both kernels (with and without the last state) on a small problem on ``device`` and compare outputs
    and gradients with the reference loop: None when they agree, else why not (a failed compile included). Runs
    with gradients on and autocast off whatever the caller's mode (``backend_for`` may be asked under no_grad)."""
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            return _compare(_check_inputs(device), device)
    except Exception as exc:  # a kernel that does not compile or launch here; never worse than the slower backend
        text = str(exc).strip().splitlines()
        return f"they fail on {device}: {type(exc).__name__}: {text[0][:200] if text else ''}"


def _check_inputs(device: torch.device) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    b, d, length, n = 2, BLOCK_D + 3, 9, 16             # two channel blocks, the second one partly masked

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device).requires_grad_()

    return {"u": rnd(b, d, length), "delta": rnd(b, d, length, scale=0.5), "A": rnd(d, n, scale=0.5, shift=-1.0),
            "B": rnd(b, n, length), "C": rnd(b, n, length), "D": rnd(d), "z": rnd(b, d, length),
            "delta_bias": rnd(d, scale=0.1)}


def _compare(args: dict[str, Tensor], device: torch.device) -> str | None:
    from .scan import selective_scan_reference

    for last in (False, True):
        results = []
        for fn in (selective_scan_reference, selective_scan_triton):
            out = fn(**args, delta_softplus=True, return_last_state=last)
            loss = (out[0].sum() + out[1].square().sum()) if last else out.square().sum()
            grads = torch.autograd.grad(loss, list(args.values()))
            results.append([out[0] if last else out, *grads])
        for name, ref, got in zip(["out", *args], *results):
            if not torch.allclose(got, ref, rtol=6e-4, atol=2e-3):
                return (f"its {'gradient of ' + name if name != 'out' else 'output'} differs from the reference "
                        f"loop's on {device} by up to {(got - ref).abs().max().item():.2g}")
    return None


def triton_usable(device: torch.device | str) -> bool:
    """True when the Triton kernels run correctly on ``device`` (checked there at the first call)."""
    return _why_not(torch.device(device)) is None


def triton_status(device: torch.device | str = "cuda") -> str:
    """One line: whether the Triton kernels are usable on ``device``, or why not."""
    why = _why_not(torch.device(device))
    return "available" if why is None else f"unavailable: {why}"


def _block_n(n: int) -> int:
    return max(2, 1 << (n - 1).bit_length())                          # a power of two ≥ N (Triton's blocks)


def _grid(u: Tensor) -> tuple[int, int]:
    return u.shape[0], -(-u.shape[1] // BLOCK_D)


class _TritonCore:
    """The two kernels as a :class:`~ssmad.ssm.ops.KernelScan` core (float32 arithmetic)."""

    @staticmethod
    def dtype(u: Tensor) -> torch.dtype:
        return torch.float32

    @staticmethod
    def forward(u, dl, a, b_t, c_t, y, last) -> None:
        fwd, _ = _kernels()
        _, nd, length = u.shape
        n = a.shape[1]
        with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
            fwd[_grid(u)](u, dl, a, b_t, c_t, y, y if last is None else last, nd, length, n,
                          STORE_LAST=last is not None, BLOCK_D=BLOCK_D, BLOCK_N=_block_n(n),
                          num_warps=NUM_WARPS)

    @staticmethod
    def backward(u, dl, a, b_t, c_t, gy, glast):
        _, bwd = _kernels()
        nb, nd, length = u.shape
        n = a.shape[1]
        grid = _grid(u)
        states = u.new_empty(nb, nd, length, n)                       # scratch, freed on return
        g_du, g_dl = torch.empty_like(u), torch.empty_like(u)
        g_a = u.new_empty(nb, nd, n)
        g_b = u.new_empty(nb, grid[1], length, n)
        g_c = u.new_empty(nb, grid[1], length, n)
        with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
            bwd[grid](u, dl, a, b_t, c_t, gy, gy if glast is None else glast, states, g_du, g_dl, g_a, g_b, g_c,
                      nd, length, n, HAS_GLAST=glast is not None, BLOCK_D=BLOCK_D, BLOCK_N=_block_n(n),
                      num_warps=NUM_WARPS)
        return g_du, g_dl, g_a.sum(0), g_b.sum(1), g_c.sum(1)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False):
    """The selective scan by two Triton kernels (CUDA tensors; CPU tensors with ``TRITON_INTERPRET=1``). Unlike
    ``auto``, it runs them without the check at first use."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    kernels = _kernels()
    if isinstance(kernels, str):
        raise RuntimeError(f"selective scan 'triton': {kernels} (install PyTorch's CUDA build, which brings Triton, "
                           f"or use 'torch' / 'auto')")
    if not runs_on(u.device):
        raise ConfigError(f"selective scan 'triton': needs CUDA tensors, got {u.device} (on a CPU use 'cpu', 'torch' "
                          f"or 'auto'; TRITON_INTERPRET=1 runs it in Triton's slow interpreter)")
    return KernelScan.apply(_TritonCore, u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                            bool(return_last_state))
