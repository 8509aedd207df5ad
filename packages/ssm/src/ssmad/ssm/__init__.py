"""ssmad ssm: selective-scan backends, the bidirectional Mamba (Vision Mamba v2) mixer and the ViM encoder.

    from ssmad.core import build
    scan = build("scan", "auto")          # CUDA: mamba_ssm or Triton kernels; CPU: a compiled kernel; else PyTorch
    y = scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
    mixer = build("mixer", "vim", d_model=192)      # tokens B×L×192 → B×L×192

    from ssmad.ssm import ViMEncoder
    enc = ViMEncoder(in_chans=1024, img_size=64, patch_size=4, d_model=192, depth=8)   # → B×192×16×16

Registered components: ``scan``/``reference``, ``scan``/``torch``, ``scan``/``cpu`` (built on first use),
``scan``/``triton`` (when Triton is installed; CUDA tensors), ``scan``/``auto``, ``scan``/``mamba_ssm`` (only when
mamba_ssm imports) and ``mixer``/``vim``.
"""

from .auto import AutoScan, scan_device_problem
from .cpu_kernel import cpu_kernel_available, cpu_kernel_status, selective_scan_cpu
from .encoder import DropPath, RMSNorm, ViMBlock, ViMEncoder, map_to_tokens, tokens_to_map
from .mixer import BiMambaMixer, causal_conv1d, causal_conv1d_available, resolve_scan
from .scan import (
    mamba_ssm_available,
    selective_scan_mamba,
    selective_scan_reference,
    selective_scan_torch,
)

__version__ = "0.7.0"

__all__ = [
    "AutoScan", "BiMambaMixer", "DropPath", "RMSNorm", "ViMBlock", "ViMEncoder", "causal_conv1d",
    "causal_conv1d_available", "cpu_kernel_available", "cpu_kernel_status", "map_to_tokens", "mamba_ssm_available",
    "resolve_scan", "scan_device_problem", "selective_scan_cpu", "selective_scan_mamba", "selective_scan_reference",
    "selective_scan_torch", "tokens_to_map",
]
