"""What the selective-scan backends share: the argument checks, the arithmetic dtype, Δ's bias and softplus, the
silu gate's backward, and :class:`KernelScan`, the autograd function around a compiled kernel's core (``triton``;
the ``cpu`` kernel fuses those parts itself). Every backend module imports this one; it imports none of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _silu_gate_backward(gy: Tensor, pre_gate: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """For out = y·silu(z): (∂L/∂y, ∂L/∂z) from g = ∂L/∂out, y and z (any common layout)."""
    sz = torch.sigmoid(z)
    gz = gy * pre_gate * sz * (1 + z * (1 - sz))
    return gy * (z * sz), gz


def _grad_like(g: Tensor | None, ref: Tensor | None) -> Tensor | None:
    """A backward's gradient for input ``ref`` in ``ref``'s dtype (None where there is no input or no gradient)."""
    return None if g is None or ref is None else g.to(ref.dtype)


def _softplus_grad_(g: Tensor, delta: Tensor) -> Tensor:
    """g ← g·∂Δ/∂δ in place for Δ = softplus(δ): σ(δ) = 1 - exp(-Δ), computed from Δ itself."""
    return g.mul_(torch.expm1(-delta).neg_())


# ---- the autograd function of the kernel backends (cpu, triton) ---------------------------------------------
#
# A kernel backend supplies only the scan itself, as a "core" with three static methods, on contiguous tensors of
# the core's dtype: u, Δ (after bias and softplus), y, ∂L/∂y B×D×L; A D×N; B, C as B×L×N (each step's N values
# together); the last state B×D×N.
#   dtype(u) -> the arithmetic's dtype for inputs like u
#   forward(u, dl, A, b_t, c_t, y, last)        fills y (C_t·h_t) and, unless None, last (h_{L-1})
#   backward(u, dl, A, b_t, c_t, gy, glast)     -> ∂L/∂(Δu), ∂L/∂Δ through the decay only (B×D×L), ∂L/∂A (D×N),
#                                                 ∂L/∂B, ∂L/∂C (B×L×N); glast = ∂L/∂h_{L-1} or None
# KernelScan does the rest: Δ's bias and softplus, D·u, the silu gate and every chain rule around the core.

class KernelScan(torch.autograd.Function):
    """``KernelScan.apply(core, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)``: the
    selective scan around a kernel backend's core (see the comment above)."""

    @staticmethod
    def forward(ctx, core, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        ct = core.dtype(u)
        u_c = u.to(ct).contiguous()
        dl = _prepare_delta(delta.to(ct), None if delta_bias is None else delta_bias.to(ct), delta_softplus)
        dl = dl.contiguous()
        a_c = A.to(ct).contiguous()
        b_t = B.to(ct).transpose(1, 2).contiguous()                    # B×L×N
        c_t = C.to(ct).transpose(1, 2).contiguous()
        nb, nd, _ = u.shape
        y = torch.empty_like(u_c)
        last = u_c.new_empty(nb, nd, A.shape[1]) if return_last_state else None
        core.forward(u_c, dl, a_c, b_t, c_t, y, last)
        if D is not None:
            y.addcmul_(u_c, D.to(ct)[:, None])                         # y_t = C_t·h_t + D u_t
        out = y * F.silu(z.to(ct)) if z is not None else y
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, u_c, dl, a_c, b_t, c_t,
                              y if z is not None else None)
        ctx.core, ctx.delta_softplus = core, delta_softplus
        out = out.to(u.dtype)
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, gout, glast=None):
        u, delta, A, B, C, D, z, delta_bias, u_c, dl, a_c, b_t, c_t, pre_gate = ctx.saved_tensors
        ct = u_c.dtype
        gy = gout.to(ct).contiguous()
        gz = None
        if z is not None:
            gy, gz = _silu_gate_backward(gy, pre_gate, z.to(ct))
            gy = gy.contiguous()
        gD = (gy * u_c).sum((0, 2)) if D is not None else None
        glast = None if glast is None else glast.to(ct).contiguous()
        g_du, g_dl, g_a, g_b, g_c = ctx.core.backward(u_c, dl, a_c, b_t, c_t, gy, glast)
        g_dl.addcmul_(g_du, u_c)                                       # Δ enters through the decay and Δ·u
        gu = g_du.mul_(dl)
        if D is not None:
            gu.addcmul_(gy, D.to(ct)[:, None])
        if ctx.delta_softplus:
            _softplus_grad_(g_dl, dl)
        g_bias = g_dl.sum((0, 2)) if delta_bias is not None else None

        back = _grad_like
        return (None, back(gu, u), back(g_dl, delta), back(g_a, A), back(g_b.transpose(1, 2), B),
                back(g_c.transpose(1, 2), C), back(gD, D), back(gz, z), back(g_bias, delta_bias), None, None)
