"""The bidirectional Mamba block of Vision Mamba ("v2"): a token mixer B×L×d_model → B×L×d_model.

Shared ``in_proj`` (d_model → 2·d_inner, no bias) splits every token into a branch input x and a gate z. Each
direction has its own depthwise causal conv1d (kernel d_conv, SiLU), ``x_proj`` (d_inner → dt_rank + 2·N),
``dt_proj`` (dt_rank → d_inner), ``A_log`` and ``D``; the backward direction runs on the sequence flipped along L
(x and z both) and its output is flipped back. The two gated outputs are summed and halved, then ``out_proj``.
Both directions always run (the stock mamba_ssm non-fused path silently runs only the forward one).

Parameter names follow the Vision Mamba code (``conv1d``/``conv1d_b``, ``x_proj``/``x_proj_b``, ``dt_proj``/
``dt_proj_b``, ``A_log``/``A_b_log``, ``D``/``D_b``) so its checkpoints' mixer weights load by name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmad.core import ConfigError, UnknownComponentError

from .auto import AutoScan, scan_device_problem

__all__ = ["BiMambaMixer", "causal_conv1d", "causal_conv1d_available", "resolve_scan"]

Direction = Literal["forward", "backward"]


@functools.cache
def _causal_conv1d_fn() -> Callable[..., Tensor] | None:
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # not installed, or its CUDA extension does not load: use PyTorch
        return None
    return causal_conv1d_fn


def causal_conv1d_available() -> bool:
    """True when the ``causal-conv1d`` CUDA kernel imports."""
    return _causal_conv1d_fn() is not None


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """SiLU(depthwise causal conv1d): x B×C×L, weight C×1×k. Output t sees inputs t-k+1..t only.

    Uses ``causal_conv1d.causal_conv1d_fn`` for CUDA tensors when it imports, else ``F.conv1d`` on the sequence
    left-padded with k-1 zeros.
    """
    fn = _causal_conv1d_fn()
    if fn is not None and x.is_cuda:
        return fn(x, weight.squeeze(1), bias, activation="silu")
    k = weight.shape[-1]
    return F.silu(F.conv1d(F.pad(x, (k - 1, 0)), weight, bias, groups=x.shape[1]))


def resolve_scan(scan: str | Callable[..., Any]) -> Callable[..., Any]:
    """A scan backend: a callable is used as is, a name is built from the registry (kind ``scan``)."""
    if callable(scan):
        return scan
    from ssmad.core import build

    try:
        return build("scan", scan)
    except UnknownComponentError as exc:
        raise ConfigError(f"parameter 'scan': {exc}") from None


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba (Vision Mamba v2) mixer; tokens B×L×d_model → B×L×d_model.

    ``forward_half(tokens)`` and ``backward_half(tokens)`` give the gated output (B×L×d_inner) of one direction
    on the tokens as passed; ``forward`` equals
    ``out_proj((forward_half(x) + backward_half(x.flip(1)).flip(1)) / 2)``.
    With ``bidirectional=False`` it is a plain (causal) Mamba mixer: ``out_proj(forward_half(x))``.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 scan: str | Callable[..., Any] = "auto", bidirectional: bool = True,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        for key, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"BiMambaMixer: parameter {key!r} must be a positive integer, got {value!r}")
        if dt_rank is not None and (not isinstance(dt_rank, int) or dt_rank <= 0):
            raise ConfigError(f"BiMambaMixer: parameter 'dt_rank' must be a positive integer, got {dt_rank!r}")
        if not 0 < dt_min < dt_max:
            raise ConfigError(f"BiMambaMixer: parameters 'dt_min' < 'dt_max' must be positive and ordered, "
                              f"got {dt_min!r}, {dt_max!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.bidirectional = bidirectional
        self.scan_name = scan if isinstance(scan, str) else getattr(scan, "__name__", repr(scan))
        self.scan = resolve_scan(scan)
        self._dt_init = (dt_min, dt_max, dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        for suffix in ("", "_b") if bidirectional else ("",):
            self.add_module("conv1d" + suffix, nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                                         bias=True))
            self.add_module("x_proj" + suffix, nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            self.add_module("dt_proj" + suffix, nn.Linear(self.dt_rank, self.d_inner, bias=True))
            self.register_parameter("A_b_log" if suffix else "A_log", nn.Parameter(torch.empty(self.d_inner, d_state)))
            self.register_parameter("D" + suffix, nn.Parameter(torch.empty(self.d_inner)))
        self.reset_ssm_parameters()

    # -- initialisation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of the SSM parameters of both directions.

        dt_proj weight U(±dt_rank^-0.5); dt_proj bias = softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max]
        (so that softplus(bias) starts there); A_log = log(1..N) per channel; D = 1.
        """
        dt_min, dt_max, floor = self._dt_init
        for d in self._directions():
            conv, _, dt_proj, a_log, skip = self._params(d)
            std = self.dt_rank ** -0.5
            nn.init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))     # inverse of softplus
            dt_proj.bias._no_reinit = True                             # type: ignore[attr-defined]
            a_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
            skip.fill_(1.0)
            a_log._no_weight_decay = True                              # type: ignore[attr-defined]
            skip._no_weight_decay = True                               # type: ignore[attr-defined]

    # -- parts -------------------------------------------------------------------------------------------------
    def _directions(self) -> tuple[Direction, ...]:
        return ("forward", "backward") if self.bidirectional else ("forward",)

    def _params(self, direction: Direction):
        if direction == "forward":
            return self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D
        if not self.bidirectional:
            raise ValueError("BiMambaMixer: this mixer was built with bidirectional=False: no backward direction")
        return self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b

    def in_projection(self, tokens: Tensor) -> Tensor:
        """tokens B×L×d_model → xz B×2·d_inner×L (x: first d_inner channels, gate z: the rest)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.d_model:
            raise ValueError(f"BiMambaMixer: expected tokens B×L×{self.d_model}, got shape {tuple(tokens.shape)}")
        return self.in_proj(tokens).transpose(1, 2)

    def branch(self, xz: Tensor, direction: Direction) -> Tensor:
        """One direction's gated SSM output (B×d_inner×L) on xz as given (no flipping here)."""
        conv, x_proj, dt_proj, a_log, skip = self._params(direction)
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x.contiguous(), conv.weight, conv.bias)      # B×d_inner×L
        x_dbl = x_proj(x.transpose(1, 2))                              # B×L×(R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)              # bias goes in as delta_bias
        A = -torch.exp(a_log.float())
        return self.scan(x, delta.contiguous(), A, b.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous(),
                         skip.float(), z.contiguous(), delta_bias=dt_proj.bias.float(), delta_softplus=True)

    def forward_half(self, tokens: Tensor) -> Tensor:
        """Forward direction's gated output on ``tokens`` as given, B×L×d_inner."""
        return self.branch(self.in_projection(tokens), "forward").transpose(1, 2)

    def backward_half(self, tokens: Tensor) -> Tensor:
        """Backward direction's gated output on ``tokens`` as given (pass them flipped to mirror ``forward``)."""
        return self.branch(self.in_projection(tokens), "backward").transpose(1, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        xz = self.in_projection(tokens)
        y = self.branch(xz, "forward")
        if self.bidirectional:
            y_b = self.branch(xz.flip(-1), "backward").flip(-1)
            y = (y + y_b) / 2
        return self.out_proj(y.transpose(1, 2))

    def scan_backend(self, device: torch.device | str) -> str:
        """The scan backend that runs on ``device``: ``auto`` resolved to what it picks there. A ConfigError when the
        backend named in ``scan`` cannot run there (e.g. ``cpu`` on a GPU, ``triton`` on a CPU)."""
        if isinstance(self.scan, AutoScan):
            return self.scan.backend_for(torch.empty(0, device=device))
        if (problem := scan_device_problem(self.scan_name, device)) is not None:
            raise ConfigError(f"parameter 'scan' = {self.scan_name!r}: the backend {problem}, and the model runs on "
                              f"{torch.device(device)}; use 'auto', which picks the best backend for each device")
        return self.scan_name

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, bidirectional={self.bidirectional}, scan={self.scan_name!r}")
