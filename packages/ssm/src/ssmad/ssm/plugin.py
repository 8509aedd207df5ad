"""ssmad-ssm plugin: registers the selective-scan backends (kind ``scan``) and the ViM mixer (kind ``mixer``)."""

from __future__ import annotations

import importlib.util
from typing import Any

from ssmad.core import ConfigError, configclass, field, hookimpl, non_empty, positive

from .auto import AutoScan
from .scan import mamba_ssm_available, selective_scan_mamba, selective_scan_reference, selective_scan_torch


@configclass
class VimMixerConfig:
    """Parameters of the bidirectional Mamba (Vision Mamba v2) mixer."""

    d_model: int = field(validator=positive)
    d_state: int = field(default=16, validator=positive)
    d_conv: int = field(default=4, validator=positive)
    expand: int = field(default=2, validator=positive)
    dt_rank: int | None = field(default=None, validator=positive)
    dt_min: float = field(default=1e-3, validator=positive)
    dt_max: float = field(default=0.1, validator=positive)
    scan: str = field(default="auto", validator=non_empty)
    bidirectional: bool = True

    def __attrs_post_init__(self) -> None:
        if not self.dt_min < self.dt_max:
            raise ValueError(f"parameter 'dt_max' must be > dt_min ({self.dt_min!r}), got {self.dt_max!r}")


def reference_scan() -> Any:
    """Selective scan as a plain sequential loop (the numerical oracle; slow)."""
    return selective_scan_reference


def torch_scan() -> Any:
    """Selective scan in pure PyTorch: blocked forward, hand-written reverse-scan backward (any device)."""
    return selective_scan_torch


def chunked_scan() -> Any:
    """Selective scan in plain tensor ops, chunk by chunk (no custom kernel, no per-step loop: exports to ONNX)."""
    from .chunked import selective_scan_chunked

    return selective_scan_chunked


def cpu_scan() -> Any:
    """Selective scan by a C++ kernel compiled on first use (CPU tensors; needs a C++ compiler)."""
    from .cpu_kernel import selective_scan_cpu

    return selective_scan_cpu


def triton_scan() -> Any:
    """Selective scan by two Triton kernels compiled on first use (CUDA tensors; needs Triton)."""
    from .triton_scan import selective_scan_triton

    return selective_scan_triton


def mamba_ssm_scan() -> Any:
    """Selective scan by mamba_ssm's CUDA kernel (CUDA tensors only)."""
    return selective_scan_mamba


def auto_scan() -> Any:
    """Selective scan picked per call: mamba_ssm, else triton on CUDA; the cpu kernel on CPU; else torch."""
    return AutoScan()


def vim_mixer(cfg: VimMixerConfig) -> Any:
    """Bidirectional Mamba mixer (Vision Mamba v2): tokens B×L×d_model → B×L×d_model."""
    from .mixer import BiMambaMixer

    try:
        return BiMambaMixer(cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                            dt_rank=cfg.dt_rank, dt_min=cfg.dt_min, dt_max=cfg.dt_max, scan=cfg.scan,
                            bidirectional=cfg.bidirectional)
    except ConfigError as exc:
        raise ConfigError(f"mixer 'vim': {exc}") from None


@hookimpl
def ssmad_register(register) -> None:
    register("scan", "reference", reference_scan)
    register("scan", "torch", torch_scan)
    register("scan", "cpu", cpu_scan)
    register("scan", "chunked", chunked_scan)
    if importlib.util.find_spec("triton") is not None:     # found without importing it (listing stays fast)
        register("scan", "triton", triton_scan)
    if mamba_ssm_available():
        register("scan", "mamba_ssm", mamba_ssm_scan)
    register("scan", "auto", auto_scan)
    register("mixer", "vim", vim_mixer, config=VimMixerConfig)
