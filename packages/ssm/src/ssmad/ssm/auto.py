"""``auto``: the selective-scan backend each call's tensors can run fastest, and why a named backend cannot run on a
device. It imports every backend module; none of them imports it."""

from __future__ import annotations

import torch
from torch import Tensor

from .cpu_kernel import cpu_kernel_available, cpu_kernel_status, selective_scan_cpu
from .scan import mamba_ssm_available, selective_scan_mamba, selective_scan_torch
from .triton_scan import runs_on, selective_scan_triton, triton_usable


def scan_device_problem(name: str, device: torch.device | str) -> str | None:
    """Why the backend registered as ``name`` cannot run on ``device``, or None (also for ``auto`` and backends it
    does not know, e.g. a plugin's)."""
    device = torch.device(device)
    if name == "cpu":
        if device.type != "cpu":
            return "runs on CPU tensors only"
        return None if cpu_kernel_available() else f"its compiled kernel is {cpu_kernel_status()}"
    if name == "mamba_ssm" and device.type != "cuda":
        return "runs on CUDA tensors only"
    if name == "triton":
        return None if runs_on(device) else "runs on CUDA tensors only"
    return None


class AutoScan:
    """Picks a backend per call: for CUDA tensors ``mamba_ssm`` when it imports, else the ``triton`` kernels when
    they passed their check on that device, else ``torch``; for CPU tensors the compiled ``cpu`` kernel when it
    builds, else ``torch``."""

    def backend_for(self, u: Tensor) -> str:
        if u.is_cuda:
            if mamba_ssm_available():
                return "mamba_ssm"
            return "triton" if triton_usable(u.device) else "torch"
        if u.device.type == "cpu":
            if cpu_kernel_available():
                return "cpu"
        return "torch"

    def __call__(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                 z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                 return_last_state: bool = False):
        name = self.backend_for(u)
        fn = {"cpu": selective_scan_cpu, "triton": selective_scan_triton, "mamba_ssm": selective_scan_mamba}.get(
            name, selective_scan_torch)
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    def __repr__(self) -> str:
        return "AutoScan()"
