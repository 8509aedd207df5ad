"""A bounded in-memory store of a frozen network's outputs by image, so that a training does not compute the same
features of the same image again every epoch."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

__all__ = ["FeatureCache"]


class FeatureCache:
    """Tensors (one image's outputs of a frozen network, e.g. its backbone stages) by key, up to ``max_bytes``.

    ``get(key)`` returns what :meth:`put` stored (a tuple of tensors) or None. Once full it keeps what it holds and
    stores nothing more: a training visits every image once per epoch, so evicting would only trade one miss for
    another. ``dtype``: a lower precision floating tensors are stored in where it holds them exactly (values that
    came out of a network run in it; others are stored as given), so :meth:`get` returns what was put, bit for
    bit, in the dtype it was put in. ``max_bytes`` 0 stores nothing. The owner keys the entries by what the
    outputs depend on (the image, the network's precision)."""

    def __init__(self, max_bytes: int, dtype: torch.dtype | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"FeatureCache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes, self.dtype = int(max_bytes), dtype
        self._store: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self._dtypes: dict[Hashable, tuple[torch.dtype, ...]] = {}
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: Hashable) -> tuple[torch.Tensor, ...] | None:
        found = self._store.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return tuple(t.to(d) for t, d in zip(found, self._dtypes[key], strict=True))

    def put(self, key: Hashable, tensors: Sequence[torch.Tensor]) -> bool:
        """Store ``tensors`` (detached, on the device they are on) under ``key``; False when they would not fit (or
        ``key`` is already stored). What :meth:`get` returns may be the stored tensors themselves: not to be
        modified in place."""
        if key in self._store or self.nbytes >= self.max_bytes:
            return False
        kept = tuple(self._compact(t.detach()) for t in tensors)
        size = sum(t.numel() * t.element_size() for t in kept)
        if self.nbytes + size > self.max_bytes:
            return False
        self._store[key] = kept
        self._dtypes[key] = tuple(t.dtype for t in tensors)
        self.nbytes += size
        return True

    def _compact(self, t: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and t.is_floating_point() and t.dtype != self.dtype:
            low = t.to(self.dtype)
            if torch.equal(low.to(t.dtype), t):
                return low
        return t.clone()

    def clear(self) -> None:
        self._store.clear()
        self._dtypes.clear()
        self.nbytes = 0
