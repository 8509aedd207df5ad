"""Selective-scan (Mamba S6) backends with the call signature of ``mamba_ssm``'s ``selective_scan_fn``.

For u, Δ ∈ ℝ^{B×D×L}, A ∈ ℝ^{D×N}, B_t, C_t ∈ ℝ^{B×N×L}, optional D ∈ ℝ^D, gate z ∈ ℝ^{B×D×L} and bias ∈ ℝ^D::

    Δ ← softplus(Δ + bias)                      (softplus only when delta_softplus=True)
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t     (h_{-1} = 0, h_t ∈ ℝ^{B×D×N})
    y_t = C_t · h_t + D u_t
    out = y ⊙ silu(z)

Backends (all take the same arguments and return ``out`` in ``u``'s dtype, plus the last state
``h_{L-1}`` (B×D×N, float32) when ``return_last_state=True``):

- :func:`selective_scan_reference` — the sequential loop over L, kept plain: the numerical oracle.
- :func:`selective_scan_torch` — pure PyTorch, any device. A custom autograd function: the forward is a two-level
  chunked scan (a short sequential scan inside every chunk, all chunks at once, then one carry per chunk), the
  backward a hand-written reverse scan of the same shape. It keeps the decays exp(Δ·A) for the backward but not
  the B×D×N×L states, which the backward recomputes (without exponentials) a group of chunks at a time.
  Every exponential it takes is of a sum of Δ·A terms, never of a negated one, so nothing can overflow where the
  recurrence itself does not (long sequences and very negative Δ·A are safe).
- :func:`selective_scan_mamba` — ``mamba_ssm``'s CUDA kernel, only when ``mamba_ssm`` imports.
- :class:`AutoScan` — per call: ``mamba_ssm`` for CUDA tensors when it is available, else ``torch``.

Arithmetic is in float32 (float64 inputs stay float64, which the tests use for gradient checks).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AutoScan", "ScanFn", "mamba_ssm_available", "selective_scan_mamba", "selective_scan_reference",
    "selective_scan_torch",
]

ScanFn = Callable[..., Any]


# ---- argument checks shared by the backends ------------------------------------------------------------------

def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
           delta_bias: Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective scan: u must be B×D×L, got shape {tuple(u.shape)}")
    b, d, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective scan: A must be D×N with D={d}, got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective scan: complex A is not supported")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 3 or tuple(t.shape) != (b, n, length):
            raise ValueError(f"selective scan: {name} must be B×N×L = {(b, n, length)} (the 'variable' layout), "
                             f"got shape {tuple(t.shape)}")
    if D is not None and tuple(D.shape) != (d,):
        raise ValueError(f"selective scan: D must have shape ({d},), got {tuple(D.shape)}")
    if delta_bias is not None and tuple(delta_bias.shape) != (d,):
        raise ValueError(f"selective scan: delta_bias must have shape ({d},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if softplus else delta


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


# ---- chunked pure-PyTorch backend ----------------------------------------------------------------------------
#
# Layout: time-major. Per-step tensors are Lp×B×D (Δ, Δ·u, y) or Lp×B×N (B, C), decays and states Lp×B×N×D, with
# L zero-padded to Lp = T·nc (Δ = 0 gives a decay of exactly 1 and an input of 0, so padding changes no state).
# Viewed as nc×T×…, "step t of every chunk" is one slice, so each Python-level step is one op over nc·B·N·D
# numbers and the loops run about 2T + nc times instead of L times. D is the innermost axis (not N, as in
# mamba_ssm's reference): broadcasting over a short innermost N axis defeats vectorisation on CPU.
#
# Forward (h_t = a_t h_{t-1} + x_t, a_t = exp(Δ_t A), x_t = Δ_t u_t B_t):
#   pass 1   the decays, and the state at the end of every chunk with each chunk started from zero (all at once);
#   carry    the state entering chunk c: H_c = P_{c-1} H_{c-1} + end_{c-1}, P_c = exp(A Σ_{t∈c} Δ_t) (≤ 1);
#   pass 2   the scan again, every chunk started from its true entering state, and y_t = C_t·h_t per step.
# Backward (adjoint λ_t = ∂L/∂h_t = a_{t+1} λ_{t+1} + C_t g_t): pass 1 and the carry run from the end and give
# what flows into every chunk from the later ones; then, a group of chunks at a time, the group's states are
# recomputed from the saved entering states (no exponentials: the decays are saved) and pass 2 runs backwards
# taking every gradient while λ_t is at hand: ∂L/∂(Δ_t A) = λ_t a_t h_{t-1}, ∂L/∂x_t = λ_t, ∂L/∂C_t = Σ_d g_t h_t.
# So the forward keeps the decays (B×D×N×L) and the entering states (B×D×N per chunk), not the states.
# All exponents are sums of Δ·A (≤ 0 for A ≤ 0, Δ ≥ 0): nothing is divided by a decay or raised to
# exp(+|cumsum|). exp is taken as exp2 of Δ·(A·log2 e), about twice as fast as exp on CPU.

_LOG2E = 1.4426950408889634
_GROUP_ELEMENTS = 2 ** 22     # backward: states are recomputed for groups of chunks of at most this many numbers


def _chunk_size(length: int) -> int:
    """Steps per chunk: about sqrt(L) (balancing the two loops), a power of two in [4, 64]."""
    if length <= 4:
        return max(length, 1)
    return int(min(64, max(4, 2 ** math.ceil(math.log2(math.sqrt(length))))))


def _time_major(x: Tensor, lp: int) -> Tensor:
    """B×C×L → Lp×B×C (zero-padded at the end; a 2-D transpose, the cheapest copy)."""
    b, c, length = x.shape
    out = x.reshape(b * c, length).t()
    if lp > length:
        out = torch.cat([out, out.new_zeros(lp - length, b * c)])
    return out.contiguous().view(lp, b, c)


def _channel_major(x: Tensor, length: int) -> Tensor:
    """Lp×B×C → B×C×L (drops the padding)."""
    lp, b, c = x.shape
    return x[:length].reshape(length, b * c).t().reshape(b, c, length)


class _Chunked:
    """The scan's inputs, time-major (float32/64): Δ, Δ·u (Lp×B×D), B, C (Lp×B×N), and (A·log2 e)ᵀ (N×D)."""

    def __init__(self, u: Tensor, dlt: Tensor, A: Tensor, B: Tensor, C: Tensor, t: int | None = None) -> None:
        self.length = u.shape[-1]
        self.t = min(t, self.length) if t else _chunk_size(self.length)
        self.nc = -(-self.length // self.t)
        lp = self.t * self.nc
        self.dl = _time_major(dlt, lp)
        self.du = _time_major(dlt * u, lp)
        self.bt = _time_major(B, lp)
        self.ct = _time_major(C, lp)
        self.a2 = (A * _LOG2E).t().contiguous()
        self.b, self.n, self.d = u.shape[0], A.shape[1], A.shape[0]

    def steps(self, x: Tensor) -> Tensor:
        """Lp×… → nc×T×… (a view); ``steps(x)[:, t]`` is step t of every chunk."""
        return x.view(self.nc, self.t, *x.shape[1:])

    def chunk_decay(self, out: Tensor | None = None) -> Tensor:
        """Π_t a_t over each chunk, nc×B×N×D (= exp(A Σ_t Δ_t), from the small Δ tensor)."""
        return torch.mul(self.steps(self.dl).sum(1).unsqueeze(-2), self.a2, out=out).exp2_()

    def last_index(self) -> tuple[int, int]:
        """(chunk, step) of position L-1."""
        return (self.length - 1) // self.t, (self.length - 1) % self.t

    def forward_scan(self, keep: bool, h0: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Scan from the state ``h0`` (B×N×D, zero when None).

        Returns (y Lp×B×D, decays Lp×B×N×D or None, entering states nc×B×N×D, last state B×N×D). With ``keep``
        the decays are computed once and returned (for the backward); without, nothing of size L×N×D is held:
        pass 2 computes each step's decays again.
        """
        t_len, nc = self.t, self.nc
        dl, du, bt, ct = self.steps(self.dl), self.steps(self.du), self.steps(self.bt), self.steps(self.ct)
        c_last, t_last = self.last_index()
        s = self.dl.new_empty(nc, self.b, self.n, self.d)
        work = torch.empty_like(s)
        if keep:
            a = self.dl.new_empty(t_len * nc, self.b, self.n, self.d)
            av = self.steps(a)

        def decay(t: int, out: Tensor) -> Tensor:
            return torch.mul(dl[:, t].unsqueeze(-2), self.a2, out=out).exp2_()

        # pass 1: end-of-chunk states from a zero start
        for t in range(t_len):
            at = decay(t, av[:, t] if keep else work)
            if t == 0:
                torch.mul(du[:, 0].unsqueeze(-2), bt[:, 0].unsqueeze(-1), out=s)
            else:
                s.mul_(at).addcmul_(du[:, t].unsqueeze(-2), bt[:, t].unsqueeze(-1))
        # carry between chunks
        enter = torch.zeros_like(s)
        if h0 is not None:
            enter[0] = h0
        if nc > 1:
            p = self.chunk_decay(out=work)
            for c in range(1, nc):
                torch.addcmul(s[c - 1], p[c - 1], enter[c - 1], out=enter[c])
        # pass 2: the states from the true entering states, and y_t = C_t·h_t per step (two alternating state
        # buffers; without kept decays, each step's decays are computed again into the buffer it then fills)
        y = torch.empty_like(self.dl)
        yv = self.steps(y)
        prev, last = enter, s
        bufs = (s, work)
        for t in range(t_len):
            cur = bufs[t % 2]
            if keep:
                torch.mul(av[:, t], prev, out=cur)
            else:
                decay(t, cur).mul_(prev)
            cur.addcmul_(du[:, t].unsqueeze(-2), bt[:, t].unsqueeze(-1))
            yv[:, t] = torch.matmul(ct[:, t].unsqueeze(-2), cur).squeeze(-2)
            if t == t_last:
                last = cur[c_last].clone()
            prev = cur
        return y, (a if keep else None), enter, last

    def group_states(self, a: Tensor, enter: Tensor, c0: int, c1: int) -> Tensor:
        """The states of chunks c0..c1-1, recomputed from their entering states: T×(c1-c0)×B×N×D."""
        av, du, bt = self.steps(a), self.steps(self.du), self.steps(self.bt)
        out = a.new_empty(self.t, c1 - c0, self.b, self.n, self.d)
        prev = enter[c0:c1]
        for t in range(self.t):
            torch.mul(av[c0:c1, t], prev, out=out[t]).addcmul_(du[c0:c1, t].unsqueeze(-2), bt[c0:c1, t].unsqueeze(-1))
            prev = out[t]
        return out

    def reverse_scan(self, a: Tensor, gy: Tensor, glast: Tensor | None, enter: Tensor):
        """The adjoint pass; ``gy`` = ∂L/∂y (Lp×B×D), ``glast`` = ∂L/∂h_{L-1} (B×N×D) or None.

        Returns ∂L/∂(Δu) (Lp×B×D, = Σ_n λ B), ∂L/∂B and ∂L/∂C (Lp×B×N: Σ_d λ Δu, Σ_d g h), ∂L/∂Δ through the
        decay (Lp×B×D, = Σ_n A g_a / log2 e) and ∂L/∂A (D×N, = Σ Δ g_a), where g_a = ∂L/∂(Δ·A) = λ_t a_t h_{t-1}.
        """
        t_len, nc = self.t, self.nc
        dl, du, bt, ct = self.steps(self.dl), self.steps(self.du), self.steps(self.bt), self.steps(self.ct)
        gys, av = self.steps(gy), self.steps(a)
        c_last, t_last = self.last_index()

        def add_input(t: int, lam: Tensor, c0: int) -> None:   # λ += C_t g_t (+ ∂L/∂h_{L-1} at position L-1)
            c1 = c0 + lam.shape[0]
            lam.addcmul_(gys[c0:c1, t].unsqueeze(-2), ct[c0:c1, t].unsqueeze(-1))
            if glast is not None and t == t_last and c0 <= c_last < c1:
                lam[c_last - c0] += glast

        # pass 1: a_0 λ_0 of every chunk, from a zero adjoint after its end
        r = torch.zeros_like(enter)
        add_input(t_len - 1, r, 0)
        for t in range(t_len - 2, -1, -1):
            add_input(t, r.mul_(av[:, t + 1]), 0)
        r.mul_(av[:, 0])
        # carry: into_c = a_0 λ_0 of chunk c+1 (what flows into chunk c's last step; 0 for the last chunk)
        into = torch.zeros_like(r)
        if nc > 1:
            whole = self.chunk_decay()
            for c in range(nc - 2, -1, -1):
                torch.addcmul(r[c + 1], whole[c + 1], into[c + 1], out=into[c])
        del r
        # pass 2, a group of chunks at a time: every λ_t, consumed at once
        g_du = torch.empty_like(self.du)
        g_b = torch.empty_like(self.bt)
        g_c = torch.empty_like(self.ct)
        g_dl = torch.empty_like(self.dl)
        gdu, gb, gc, gdl = self.steps(g_du), self.steps(g_b), self.steps(g_c), self.steps(g_dl)
        per_chunk = t_len * self.b * self.n * self.d
        n_groups = -(-nc // max(1, _GROUP_ELEMENTS // per_chunk))
        size = -(-nc // n_groups)
        g_a = torch.zeros_like(enter[:size])
        for c0 in range(0, nc, size):
            c1 = min(nc, c0 + size)
            sts = self.group_states(a, enter, c0, c1)
            lam, tmp = into[c0:c1], torch.empty_like(into[c0:c1])
            acc = g_a[: c1 - c0]
            for t in range(t_len - 1, -1, -1):
                add_input(t, lam, c0)                                  # λ_t = a_{t+1} λ_{t+1} + C_t g_t
                gdu[c0:c1, t] = torch.matmul(bt[c0:c1, t].unsqueeze(-2), lam).squeeze(-2)
                torch.sum(torch.mul(lam, du[c0:c1, t].unsqueeze(-2), out=tmp), -1, out=gb[c0:c1, t])
                torch.sum(torch.mul(sts[t], gys[c0:c1, t].unsqueeze(-2), out=tmp), -1, out=gc[c0:c1, t])
                lam.mul_(av[c0:c1, t])                                 # a_t λ_t: feeds λ_{t-1} and g_a
                torch.mul(lam, sts[t - 1] if t > 0 else enter[c0:c1], out=tmp)    # ∂L/∂(Δ_t A)
                acc.addcmul_(tmp, dl[c0:c1, t].unsqueeze(-2))
                torch.sum(tmp.mul_(self.a2), -2, out=gdl[c0:c1, t])
            del sts
        g_dl.div_(_LOG2E)
        return g_du, g_b, g_c, g_dl, g_a.sum((0, 1)).t()


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, keep):
        ct = _compute_dtype(u)
        u_, delta_, A_, B_, C_ = (x.to(ct) for x in (u, delta, A, B, C))
        bias_ = None if delta_bias is None else delta_bias.to(ct)
        dlt = _prepare_delta(delta_, bias_, delta_softplus)
        # without a backward, longer chunks (fewer of them) halve the chunk-sized buffers: every buffer is then
        # chunk-sized and the call needs about the memory of the reference loop
        ch = _Chunked(u_, dlt, A_, B_, C_, t=None if keep else min(64, 2 * _chunk_size(u.shape[-1])))
        del dlt
        y, a, enter, last = ch.forward_scan(keep=keep)
        y = _channel_major(y, ch.length)                               # a view of the scan's own buffer
        last = last.transpose(-1, -2).contiguous() if return_last_state else None
        if D is not None:
            y.addcmul_(u_, D.to(ct)[:, None])
        pre_gate = y
        if z is not None:
            y = y * F.silu(z.to(ct)) if keep else y.mul_(F.silu(z.to(ct)))
        if keep:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, a, enter, pre_gate if z is not None else None)
            ctx.chunked = ch
        ctx.delta_softplus = delta_softplus
        ctx.return_last_state = return_last_state
        out = y.to(u.dtype)
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, gout, glast=None):
        u, delta, A, B, C, D, z, delta_bias, a, enter, pre_gate = ctx.saved_tensors
        ch: _Chunked = ctx.chunked
        ct = _compute_dtype(u)
        u_ = u.to(ct)
        gout = gout.to(ct)
        gz = None
        if z is not None:
            z_ = z.to(ct)
            sz = torch.sigmoid(z_)
            gy = gout * z_ * sz                                        # out = y·silu(z)
            gz = gout * pre_gate * sz * (1 + z_ * (1 - sz))
        else:
            gy = gout
        gD = (gy * u_).sum((0, 2)) if D is not None else None
        if glast is not None and ctx.return_last_state:
            glast = glast.to(ct).transpose(-1, -2)
        else:
            glast = None
        g_du, gB, gC, g_dl, gA = ch.reverse_scan(a, _time_major(gy, ch.t * ch.nc), glast, enter)
        g_du = _channel_major(g_du, ch.length)
        dlt = _channel_major(ch.dl, ch.length)
        g_dl = _channel_major(g_dl, ch.length).addcmul_(g_du, u_)     # Δ enters through a and through Δ·u
        gu = g_du * dlt
        if D is not None:
            gu.addcmul_(gy, D.to(ct)[:, None])
        if ctx.delta_softplus:                                         # Δ = softplus(δ + bias)
            pre = delta.to(ct) if delta_bias is None else delta.to(ct) + delta_bias.to(ct)[:, None]
            g_dl = g_dl.mul_(torch.sigmoid(pre))
        g_bias = g_dl.sum((0, 2)) if delta_bias is not None else None

        def back(g, ref):
            return None if g is None or ref is None else g.to(ref.dtype)

        return (back(gu, u), back(g_dl, delta), back(gA, A), back(_channel_major(gB, ch.length), B),
                back(_channel_major(gC, ch.length), C), back(gD, D), back(gz, z), back(g_bias, delta_bias),
                None, None, None)


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         return_last_state: bool = False):
    """The selective scan in pure PyTorch: chunked forward, hand-written reverse-scan backward (any device)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    # keep the forward's decays only when a backward can follow (ctx.needs_input_grad ignores no_grad)
    keep = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    return _ChunkedScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state),
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
        raise ValueError("selective scan 'mamba_ssm': needs CUDA tensors (use 'torch' or 'auto' on CPU)")
    # the kernel wants fp32 parameters and contiguous last dimensions
    A = A.float()
    D = None if D is None else D.float()
    delta_bias = None if delta_bias is None else delta_bias.float()
    u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
    z = None if z is None else z.contiguous()
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


class AutoScan:
    """Picks a backend per call: ``mamba_ssm`` for CUDA tensors when it imports, else ``torch``."""

    def backend_for(self, u: Tensor) -> str:
        return "mamba_ssm" if u.is_cuda and mamba_ssm_available() else "torch"

    def __call__(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                 z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                 return_last_state: bool = False):
        fn = selective_scan_mamba if self.backend_for(u) == "mamba_ssm" else selective_scan_torch
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    def __repr__(self) -> str:
        return "AutoScan()"
