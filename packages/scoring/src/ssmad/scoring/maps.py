"""What the map components share (kinds ``score``, ``smooth``, ``normaliser``, ``fusion``): every one takes maps
as torch tensors B×1×H×W (B×H×W is accepted too) or numpy arrays of those shapes, and answers in the type it was
given (numpy in, numpy out; torch keeps device and dtype)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ssmad.core import (
    DataError,
    SsmadError,
)


class NotFittedError(SsmadError, RuntimeError):
    """A fitted component (``quantile_norm``, ``position_norm``) used before ``fit`` or ``load_state_dict``."""


def _odd(inst: Any, attribute: Any, value: int) -> None:
    if value % 2 != 1:
        raise ValueError(f"parameter {attribute.name!r} must be an odd number (a centred window), got {value!r}")


def _finite_values(inst: Any, attribute: Any, value: tuple[float, ...]) -> None:
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"parameter {attribute.name!r} must hold finite numbers, got {value!r}")


def _number_array(x: Any, what: str, noun: str = "") -> np.ndarray:
    """``x`` as a numpy array of numbers; a DataError naming ``what`` (and ``noun``: "maps ") otherwise."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: {noun}cannot be read as an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what}: maps must be numbers, got dtype {arr.dtype}")
    return arr


def _maps_tensor(maps: Any, what: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """maps as a float tensor B×1×H×W, and a function that turns a result back into the caller's type."""
    if isinstance(maps, torch.Tensor):
        t = maps.detach()
        back: Callable[[torch.Tensor], Any] = lambda r: r  # noqa: E731
    else:
        t = torch.from_numpy(np.ascontiguousarray(_number_array(maps, what, "maps ")))
        back = lambda r: r.cpu().numpy()  # noqa: E731
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4 or t.shape[1] != 1:
        raise DataError(f"{what}: expected maps of shape B×1×H×W or B×H×W, got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    elif t.dtype in (torch.float16, torch.bfloat16) and t.device.type == "cpu":
        t = t.float()
    return t, back


def _restore_shape(result: torch.Tensor, like: Any) -> torch.Tensor:
    return result.squeeze(1) if len(like.shape) == 3 else result
