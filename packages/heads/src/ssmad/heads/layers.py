"""Small building blocks shared by the heads: drop-path schedule, conv+norm+activation stacks, width checks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def drop_path_schedule(drop_path: float, depth: int) -> list[float]:
    """Per-block drop-path rates rising linearly from 0 to ``drop_path`` over ``depth`` blocks."""
    if depth <= 1:
        return [0.0] * depth
    return [drop_path * i / (depth - 1) for i in range(depth)]


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3) -> list[nn.Module]:
    """``conv k×k (same padding, no bias) → BatchNorm → ReLU`` as a list of layers."""
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def check_widths(widths: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(int(w) for w in widths)
    if not out or any(w <= 0 for w in out):
        raise ValueError(f"{what} must be a non-empty list of positive integers, got {list(widths)}")
    return out
