"""Device choice shared by the apps: ``auto`` picks CUDA when available."""

from __future__ import annotations

from .errors import ConfigError


def resolve_device(name: str = "auto"):
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda[:N]")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def native_bf16_cpu(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices natively (the ``amx_bf16`` or ``avx512_bf16`` flag of Linux's
    /proc/cpuinfo, or of ``cpuinfo`` when given). Elsewhere False: torch also runs bf16 on CPUs without those
    units, by conversion, more slowly than fp32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str, device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``precision`` on ``device`` (a torch.device): ``auto`` is bf16 on CUDA
    devices that support it and on CPUs with native bf16 units, fp32 elsewhere. A ConfigError names ``precision``
    when it is unknown, and fp16 asked of a CPU (torch's CPU fp16 kernels are slower than fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if native_bf16_cpu() else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError('train.precision = "fp16" needs a CUDA device; on a CPU use "bf16" or "fp32"')
    return precision


def autocast(device, precision: str):
    """The context of mixed precision ``precision`` (already resolved: fp32, bf16 or fp16) on ``device``:
    ``torch.autocast`` for bf16 / fp16, a no-op for fp32. Matrix products and convolutions inside run in the lower
    precision; what a caller needs in fp32 (losses, statistics, the selective scan) it computes outside, or casts."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def allow_tf32(device, precision: str) -> bool:
    """Let CUDA run fp32 matrix products and convolutions in TF32 (10-bit mantissa, fp32 range; several times
    faster on Ampere and later) when the ``train.precision`` a user set, ``precision`` (not yet resolved), accepts
    reduced precision: "auto", "bf16" or "fp16". An explicit "fp32" keeps full fp32. Returns the choice; sets
    PyTorch's process-wide flags on CUDA devices only (elsewhere they mean nothing)."""
    import torch

    tf32 = precision != "fp32"
    if getattr(device, "type", None) == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return tf32
