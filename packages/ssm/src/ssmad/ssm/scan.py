"""Selective-scan (Mamba S6) backends with the call signature of ``mamba_ssm``'s ``selective_scan_fn``.

For u, Δ ∈ ℝ^{B×D×L}, A ∈ ℝ^{D×N}, B_t, C_t ∈ ℝ^{B×N×L}, optional D ∈ ℝ^D, gate z ∈ ℝ^{B×D×L} and bias ∈ ℝ^D::

    Δ ← softplus(Δ + bias)                      (softplus only when delta_softplus=True)
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t     (h_{-1} = 0, h_t ∈ ℝ^{B×D×N})
    y_t = C_t · h_t + D u_t
    out = y ⊙ silu(z)

Backends (all take the same arguments and return ``out`` in ``u``'s dtype, plus the last state
``h_{L-1}`` (B×D×N, float32) when ``return_last_state=True``):

- :func:`selective_scan_reference` — the sequential loop over L, kept plain: the numerical oracle.
- :func:`selective_scan_torch` — pure PyTorch, any device. A custom autograd function over time-major tensors:
  time runs in blocks of steps, everything without a sequential dependence is one batched op per block, and the
  recurrence is one fused multiply-add per step; the backward is a hand-written reverse (adjoint) scan of the same
  shape. It keeps the decays exp(Δ·A) for the backward but not the B×D×N×L states, which the backward recomputes
  a block at a time (without exponentials). No exponent is ever negated, so nothing can overflow where the
  recurrence itself does not (long sequences and very negative Δ·A are safe).
- :func:`~ssmad.ssm.cpu_kernel.selective_scan_cpu` (module ``cpu_kernel``) — a small C++ kernel for CPU tensors,
  compiled on first use; about three times as fast as ``torch`` on the CPU.
- :func:`~ssmad.ssm.triton_scan.selective_scan_triton` (module ``triton_scan``) — two Triton kernels for CUDA
  tensors, compiled on first use (Triton comes with PyTorch's CUDA wheels): one launch per scan.
- :func:`selective_scan_mamba` — ``mamba_ssm``'s CUDA kernel, only when ``mamba_ssm`` imports.
- :class:`~ssmad.ssm.auto.AutoScan` (module ``auto``) — per call: for CUDA tensors ``mamba_ssm`` when it is
  available, else ``triton`` when its kernels passed their check on the device, else ``torch``; for CPU tensors
  ``cpu`` when the kernel builds, else ``torch``.

What the backends share (argument checks, :class:`~ssmad.ssm.ops.KernelScan`) is in ``ops``; the modules import
one way: ``ops`` ← ``scan``, ``cpu_kernel``, ``triton_scan`` ← ``auto`` ← ``mixer``.

Arithmetic is in float32 (float64 inputs stay float64, which the tests use for gradient checks).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmad.core import ConfigError

from .ops import ScanFn, _check, _compute_dtype, _grad_like, _prepare_delta, _silu_gate_backward, _softplus_grad_

__all__ = ["mamba_ssm_available", "selective_scan_mamba", "selective_scan_reference", "selective_scan_torch"]


# ---- reference -----------------------------------------------------------------------------------------------

def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             z: Tensor | None = None, delta_bias: Tensor | None = None,
                             delta_softplus: bool = False, return_last_state: bool = False):
    """The selective scan as a plain sequential loop over L (autograd through the loop): the oracle."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    delta = _prepare_delta(delta, None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    b, d, length = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]                                      # B×D×1
        h = torch.exp(dt * A) * h + (dt * u[:, :, t, None]) * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


# ---- blocked pure-PyTorch backend ----------------------------------------------------------------------------
#
# Layout: time-major. Per-step tensors are L×B×D (u, Δ, Δ·u, z, y and their gradients) or L×B×N (B, C); decays,
# states and adjoints are L×B×N×D with D innermost (not N, as in mamba_ssm's reference: broadcasting over a short
# innermost N axis defeats vectorisation on CPU). The call transposes u, Δ, z in and y out (and the gradients in
# the backward) once each; everything in between runs on contiguous memory.
# Time runs in blocks of a few steps. Everything without a sequential dependence is one batched op over a whole
# block (decays, inputs Δ_t u_t B_t, outputs C_t·h_t, every gradient contraction); the recurrence itself is one
# fused multiply-add per step over a B×N×D slice, written into the block's input buffer, so the per-step Python
# work is a single op.
#
# Forward (h_t = a_t h_{t-1} + x_t, a_t = exp(Δ_t A), x_t = Δ_t u_t B_t): per block, the decays and inputs, the
# recurrence, then y_t = C_t·h_t as one batched matmul. With a backward to follow it keeps the decays (L×B×N×D)
# and the state entering every block, not the states: recomputing a block's states (one product and the
# recurrence) is cheaper than recomputing its decays (exponentials). Without a backward, three block buffers are
# all the memory it needs.
# Backward, blocks in reverse (adjoint λ_t = ∂L/∂h_t = a_{t+1} λ_{t+1} + C_t g_t, g_t = ∂L/∂y_t): the block's
# states, its λ (inputs C_t g_t as one op, then the recurrence, one op per step), and from them in batched ops
# ∂L/∂(Δu)_t = Σ_n λ_t B_t, ∂L/∂B_t = Σ_d λ_t Δ_t u_t, ∂L/∂C_t = Σ_d g_t h_t and, with
# g_a = ∂L/∂(Δ_t A) = λ_t a_t h_{t-1}, ∂L/∂Δ through the decay Σ_n A g_a and ∂L/∂A = Σ_{t,b} Δ_t g_a.
# No exponent is ever negated (each is Δ·A ≤ 0 for A ≤ 0, Δ ≥ 0), so nothing overflows where the recurrence
# itself does not: long sequences and very negative Δ·A are safe. exp is taken as exp2 of Δ·(A·log2 e), about
# twice as fast as exp on CPU (and the softplus derivative as 1 - exp(-softplus), from Δ itself).

_LOG2E = 1.4426950408889634
_BLOCK_ELEMENTS = 2 ** 20     # numbers in one block buffer (block steps × B × N × D), 4 MiB in float32
_BLOCK_ELEMENTS_NO_GRAD = 2 ** 18   # the same without a backward to follow


def _time_major(x: Tensor) -> Tensor:
    """B×C×L → L×B×C: always a new contiguous tensor (the callers write into it), by a 2-D transpose."""
    b, c, length = x.shape
    return x.reshape(b * c, length).t().clone(memory_format=torch.contiguous_format).view(length, b, c)


def _channel_major(x: Tensor) -> Tensor:
    """L×B×C → B×C×L (contiguous)."""
    length, b, c = x.shape
    return x.reshape(length, b * c).t().contiguous().view(b, c, length)


def _flat(x: Tensor) -> Tensor:
    """T×B×… → (T·B)×… (a view): the batch of a batched matmul."""
    return x.view(x.shape[0] * x.shape[1], *x.shape[2:])


class _Blocked:
    """The scan's per-step inputs, time-major: Δ, Δ·u (L×B×D), B, C (L×B×N), and (A·log2 e)ᵀ (N×D)."""

    def __init__(self, dl: Tensor, du: Tensor, A: Tensor, B: Tensor, C: Tensor, budget: int) -> None:
        self.length, self.b, self.d = dl.shape
        self.n = A.shape[1]
        self.dl, self.du = dl, du
        self.bt = _time_major(B)
        self.ct = _time_major(C)
        self.a2 = (A * _LOG2E).t().contiguous()
        step = max(1, min(self.length, budget // (self.b * self.n * self.d)))
        self.spans = [(s, min(self.length, s + step)) for s in range(0, self.length, step)]

    def buffer(self) -> Tensor:
        return self.dl.new_empty(self.spans[0][1] - self.spans[0][0], self.b, self.n, self.d)

    def decays(self, s: int, e: int, out: Tensor) -> Tensor:
        """a_t = exp(Δ_t A) for steps s..e-1, (e-s)×B×N×D, into ``out``."""
        return torch.mul(self.dl[s:e].unsqueeze(-2), self.a2, out=out).exp2_()

    def states(self, s: int, e: int, a: Tensor, prev: Tensor | None, out: Tensor) -> Tensor:
        """h_t for steps s..e-1 from the state ``prev`` entering step s (zero when None), into ``out``."""
        torch.mul(self.bt[s:e].unsqueeze(-1), self.du[s:e].unsqueeze(-2), out=out)          # x_t = Δ_t u_t B_t
        hs, as_ = out.unbind(0), a.unbind(0)
        if prev is not None:
            hs[0].addcmul_(as_[0], prev)
        for t in range(1, e - s):
            hs[t].addcmul_(as_[t], hs[t - 1])                                               # h_t = a_t h_{t-1} + x_t
        return out

    def forward_scan(self, keep: bool, y: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        """Returns (y L×B×D, decays L×B×N×D and entering states (blocks)×B×N×D when ``keep``, last state B×N×D).

        ``y``, when given, holds a term that C_t·h_t is added to (D·u), and receives the result.
        """
        shape = (self.b, self.n, self.d)
        decays = self.dl.new_empty(self.length, *shape) if keep else None
        enter = self.dl.new_zeros(len(self.spans), *shape) if keep else None
        abuf = None if keep else self.buffer()
        hbufs = (self.buffer(), self.buffer())
        add = y is not None
        y = torch.empty_like(self.dl) if y is None else y
        prev = None
        for i, (s, e) in enumerate(self.spans):
            a = self.decays(s, e, decays[s:e] if keep else abuf[: e - s])
            if keep and prev is not None:
                enter[i] = prev
            h = self.states(s, e, a, prev, hbufs[i % 2][: e - s])
            yb = _flat(y[s:e]).unsqueeze(1)
            cb = _flat(self.ct[s:e]).unsqueeze(1)
            if add:
                torch.baddbmm(yb, cb, _flat(h), out=yb)
            else:
                torch.bmm(cb, _flat(h), out=yb)
            prev = h[-1]
        return y, decays, enter, prev

    def reverse_scan(self, decays: Tensor, enter: Tensor, gy: Tensor, glast: Tensor | None):
        """The adjoint pass; ``gy`` = ∂L/∂y (L×B×D), ``glast`` = ∂L/∂h_{L-1} (B×N×D) or None.

        Returns ∂L/∂(Δu) (L×B×D), ∂L/∂B and ∂L/∂C (L×B×N), ∂L/∂Δ through the decay (L×B×D) and ∂L/∂A (D×N).
        """
        hbuf, lbuf, gbuf = self.buffer(), self.buffer(), self.buffer()
        g_du, g_dl = torch.empty_like(self.du), torch.empty_like(self.dl)
        g_b, g_c = torch.empty_like(self.bt), torch.empty_like(self.ct)
        g_a_sum = self.dl.new_zeros(self.n, self.d)
        carry = glast                                                   # what flows into the block's last step
        for i in range(len(self.spans) - 1, -1, -1):
            s, e = self.spans[i]
            w = e - s
            a = decays[s:e]
            h = self.states(s, e, a, enter[i] if i else None, hbuf[:w])
            lam = torch.mul(self.ct[s:e].unsqueeze(-1), gy[s:e].unsqueeze(-2), out=lbuf[:w])   # C_t g_t
            ls, as_ = lam.unbind(0), a.unbind(0)
            if carry is not None:
                ls[-1].add_(carry)
            for t in range(w - 2, -1, -1):
                ls[t].addcmul_(as_[t + 1], ls[t + 1])                   # λ_t = a_{t+1} λ_{t+1} + C_t g_t
            carry = as_[0] * ls[0]
            # (a row vector times a transposed matrix is several times faster on CPU than a matrix times a column)
            torch.bmm(_flat(self.bt[s:e]).unsqueeze(1), _flat(lam), out=_flat(g_du[s:e]).unsqueeze(1))
            torch.bmm(_flat(self.du[s:e]).unsqueeze(1), _flat(lam).transpose(1, 2), out=_flat(g_b[s:e]).unsqueeze(1))
            torch.bmm(_flat(gy[s:e]).unsqueeze(1), _flat(h).transpose(1, 2), out=_flat(g_c[s:e]).unsqueeze(1))
            ga = torch.mul(a, lam, out=gbuf[:w])                        # g_a = λ_t a_t h_{t-1}
            ga[1:].mul_(h[:-1])
            if i:
                ga[0].mul_(enter[i])
            else:
                ga[0].zero_()
            torch.sum(torch.mul(ga, self.a2, out=lam), -2, out=g_dl[s:e])
            g_a_sum.add_(ga.mul_(self.dl[s:e].unsqueeze(-2)).sum((0, 1)))
        g_dl.div_(_LOG2E)
        return g_du, g_b, g_c, g_dl, g_a_sum.t()


class _BlockedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, keep):
        ct = _compute_dtype(u)
        u_t = _time_major(u.to(ct))
        dl = _time_major(delta.to(ct))
        if delta_bias is not None:
            dl.add_(delta_bias.to(ct))
        if delta_softplus:
            dl = F.softplus(dl)
        # without a backward, quarter-size blocks and early frees keep the call's memory at about the reference's
        blk = _Blocked(dl, dl * u_t, A.to(ct), B.to(ct), C.to(ct), _BLOCK_ELEMENTS if keep else _BLOCK_ELEMENTS_NO_GRAD)
        y = None if D is None else u_t * D.to(ct)                     # y_t = C_t·h_t + D u_t
        if not keep:
            del u_t, dl
        y, decays, enter, last = blk.forward_scan(keep=keep, y=y)
        last = last.transpose(-1, -2).contiguous() if return_last_state else None
        if not keep:
            del blk
        pre_gate, z_t = y, None
        if z is not None:
            z_t = _time_major(z.to(ct))
            y = y * F.silu(z_t) if keep else y.mul_(F.silu(z_t, inplace=True))
        if keep:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, u_t, z_t, decays, enter,
                                  pre_gate if z is not None else None)
            ctx.blocked = blk
        ctx.delta_softplus = delta_softplus
        ctx.return_last_state = return_last_state
        out = _channel_major(y).to(u.dtype)
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, gout, glast=None):
        u, delta, A, B, C, D, z, delta_bias, u_t, z_t, decays, enter, pre_gate = ctx.saved_tensors
        blk: _Blocked = ctx.blocked
        ct = _compute_dtype(u)
        gy = _time_major(gout.to(ct))
        gz = None
        if z is not None:
            gy, gz = _silu_gate_backward(gy, pre_gate, z_t)
            gz = _channel_major(gz)
        gD = (gy * u_t).sum((0, 1)) if D is not None else None
        if glast is not None and ctx.return_last_state:
            glast = glast.to(ct).transpose(-1, -2)
        else:
            glast = None
        g_du, gB, gC, g_dl, gA = blk.reverse_scan(decays, enter, gy, glast)
        g_dl.addcmul_(g_du, u_t)                                      # Δ enters through a and through Δ·u
        gu = g_du.mul_(blk.dl)
        if D is not None:
            gu.addcmul_(gy, D.to(ct))
        if ctx.delta_softplus:                                         # Δ = softplus(δ + bias)
            _softplus_grad_(g_dl, blk.dl)
        g_bias = g_dl.sum((0, 1)) if delta_bias is not None else None

        back = _grad_like
        return (back(_channel_major(gu), u), back(_channel_major(g_dl), delta), back(gA, A),
                back(_channel_major(gB), B), back(_channel_major(gC), C), back(gD, D), back(gz, z),
                back(g_bias, delta_bias), None, None, None)


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         return_last_state: bool = False):
    """The selective scan in pure PyTorch: blocked forward, hand-written reverse-scan backward (any device)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    # keep the forward's decays only when a backward can follow (ctx.needs_input_grad ignores no_grad)
    keep = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    return _BlockedScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state),
                              keep)


# ---- mamba_ssm (CUDA) ----------------------------------------------------------------------------------------

@functools.cache
def _mamba_fn() -> ScanFn | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or the CUDA extension failing to load: the backend is simply absent
        return None
    return selective_scan_fn


def mamba_ssm_available() -> bool:
    """True when ``mamba_ssm``'s ``selective_scan_fn`` imports (its CUDA extension included)."""
    return _mamba_fn() is not None


def selective_scan_mamba(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         return_last_state: bool = False):
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (CUDA tensors only)."""
    fn = _mamba_fn()
    if fn is None:
        raise RuntimeError("selective scan 'mamba_ssm': mamba_ssm is not importable "
                           "(install the [cuda] extra: pip install 'ssmad-ssm[cuda]')")
    _check(u, delta, A, B, C, D, z, delta_bias)
    if not u.is_cuda:
        raise ConfigError(f"selective scan 'mamba_ssm': needs CUDA tensors, got {u.device} (use 'auto')")
    # the kernel wants fp32 parameters and contiguous last dimensions
    A = A.float()
    D = None if D is None else D.float()
    delta_bias = None if delta_bias is None else delta_bias.float()
    u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
    z = None if z is None else z.contiguous()
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
