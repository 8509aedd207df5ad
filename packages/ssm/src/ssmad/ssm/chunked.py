"""The selective scan in plain tensor operations, in forms an exported graph (ONNX, ``torch.export``) can hold: no
custom kernel and no loop over time steps (``chunked``, ``prefix``), or one written out step by step (``unrolled``).
The apps' export uses ``prefix`` (benchmarks/export_scan.py compares them). The ``chunked`` form:

Within a chunk of T steps that starts from state h₀ (per batch b, channel d, state n), with a_t = exp(Δ_t A) and
x_t = Δ_t u_t B_t, the recurrence h_t = a_t h_{t-1} + x_t has the closed form

    h_t = exp(S_t) h₀ + Σ_{k ≤ t} exp(S_t − S_k) x_k,   S_t = Σ_{j ≤ t} Δ_j A   (cumulative within the chunk),

whose exponents S_t − S_k ≤ 0 never overflow (A < 0, Δ > 0), unlike the exp(−S_k) of a one-pass cumulative sum.
Each chunk is one T×T product per (b, d, n); the chunks then pass their last state on, one after another: a graph of
L / T small blocks (``chunk``, 16 by default) instead of L steps. Arithmetic is float32 (float64 inputs too);
autograd differentiates it like any tensor code, and the ``reference`` and ``torch`` backends are its oracles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import _check, _compute_dtype, _prepare_delta

DEFAULT_CHUNK = 16


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype, last: Tensor | None):
    """y + D·u, gated by silu(z), in the input dtype; with the last state when one is given."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    out = y.to(dtype)
    return (out, last) if last is not None else out


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                           z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                           return_last_state: bool = False, chunk: int = DEFAULT_CHUNK):
    """mamba_ssm's ``selective_scan_fn`` contract (u/delta/z B×D×L, A D×N, B/C B×N×L, y B×D×L in u's dtype;
    ``return_last_state``: also the last state B×D×N, float32) computed chunk by chunk. A ValueError for bad shapes."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    if chunk < 1:
        raise ValueError(f"selective scan 'chunked': chunk must be >= 1, got {chunk}")
    ct = _compute_dtype(u)
    dl = _prepare_delta(delta.to(ct), None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    uu = u.to(ct)
    a = A.to(ct)
    bt = B.to(ct).transpose(1, 2).unsqueeze(1)                      # B×1×L×N
    ctr = C.to(ct).transpose(1, 2)                                  # B×L×N
    log_decay = dl.unsqueeze(-1) * a[:, None, :]                    # B×D×L×N: Δ_t A
    x = (dl * uu).unsqueeze(-1) * bt                                # B×D×L×N: Δ_t u_t B_t
    length = u.shape[-1]
    h = None
    ys = []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        s = torch.cumsum(log_decay[:, :, start:stop], dim=2)        # B×D×T×N
        seg = (s.unsqueeze(3) - s.unsqueeze(2)).permute(0, 1, 4, 2, 3)     # B×D×N×T(t)×T(k): S_t − S_k
        steps = stop - start
        causal = torch.ones(steps, steps, dtype=torch.bool, device=u.device).tril()
        w = torch.exp(seg.masked_fill(~causal, float("-inf")))     # 0 above the diagonal
        xc = x[:, :, start:stop].permute(0, 1, 3, 2).unsqueeze(-1)  # B×D×N×T×1
        states = torch.matmul(w, xc).squeeze(-1)                    # B×D×N×T
        if h is not None:
            states = states + torch.exp(s).permute(0, 1, 3, 2) * h.unsqueeze(-1)
        # y_t = Σ_n C_t[n] h_t[n]
        ys.append((states * ctr[:, start:stop].transpose(1, 2).unsqueeze(1)).sum(2))   # B×D×T
        h = states[..., -1]                                         # B×D×N
    y = torch.cat(ys, dim=-1)
    return _finish(y, uu, D, z, u.dtype, h if return_last_state else None)


def selective_scan_prefix(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False):
    """The same contract as :func:`selective_scan_chunked`, as a log-depth prefix scan (Hillis–Steele) over the
    pairs (a_t, x_t) with (a, x) ∘ (a', x') = (a a', a' x + x'): ⌈log₂ L⌉ steps of whole-sequence tensor ops, each
    of the work of one sequential pass. Products of decays only shrink (no overflow). A graph of a few nodes per
    step; more arithmetic than the sequential scan by the factor log₂ L."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    ct = _compute_dtype(u)
    dl = _prepare_delta(delta.to(ct), None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    uu = u.to(ct)
    a = torch.exp(dl.unsqueeze(-1) * A.to(ct)[:, None, :])            # B×D×L×N
    h = (dl * uu).unsqueeze(-1) * B.to(ct).transpose(1, 2).unsqueeze(1)
    length = u.shape[-1]
    step = 1
    while step < length:
        h = h + a * F.pad(h, (0, 0, step, 0))[:, :, :length]          # h_t += a_t · h_{t-step}
        if step * 2 < length:
            a = a * F.pad(a, (0, 0, step, 0), value=1.0)[:, :, :length]
        step *= 2
    y = (h * C.to(ct).transpose(1, 2).unsqueeze(1)).sum(-1)
    return _finish(y, uu, D, z, u.dtype, h[:, :, -1] if return_last_state else None)


def selective_scan_unrolled(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                            z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                            return_last_state: bool = False):
    """The same contract as :func:`selective_scan_chunked`, as the sequential recurrence written out step by step
    over whole-batch tensors (B×D×N a step): the least arithmetic, one small block of a graph per step (a tracer
    unrolls the loop: L steps, about four nodes each)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    ct = _compute_dtype(u)
    dl = _prepare_delta(delta.to(ct), None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    uu = u.to(ct)
    # time-major, so that each step is one slice of one split
    a = torch.exp(dl.permute(2, 0, 1).unsqueeze(-1) * A.to(ct))                      # L×B×D×N
    x = (dl * uu).permute(2, 0, 1).unsqueeze(-1) * B.to(ct).permute(2, 0, 1).unsqueeze(2)
    c = C.to(ct).permute(2, 0, 1).unsqueeze(-1)                                       # L×B×N×1
    h = None
    ys = []
    for a_t, x_t, c_t in zip(a.unbind(0), x.unbind(0), c.unbind(0), strict=True):
        h = x_t if h is None else a_t * h + x_t
        ys.append(torch.matmul(h, c_t))                                              # B×D×1
    y = torch.cat(ys, dim=-1)
    return _finish(y, uu, D, z, u.dtype, h if return_last_state else None)
