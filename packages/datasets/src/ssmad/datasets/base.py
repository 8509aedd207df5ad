"""Lazily loading sample sequences and the dataset object every ``dataset`` component returns."""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, overload

import attrs
import numpy as np
import torch

from ssmad.core import DataError, Sample, suggest

from .io import MaskRule, decoded_size, load_image, load_mask, read_unit, resize_image, resize_mask

ASPECT_TOLERANCE = 0.02  # a mask of another size is accepted (and resized) when its aspect ratio matches


class EmptyMaskWarning(UserWarning):
    """Anomalous images whose mask holds no defect pixel once read (:meth:`AnomalyDataset.verify`): their pixel
    metrics treat them as defect-free, usually the sign of a mask encoding the reader does not recognise."""


@attrs.frozen
class Entry:
    """One listed file: everything needed to load it later."""

    path: str
    label: int
    defect_type: str = "good"
    category: str = ""
    mask_path: str | None = None
    mask_rule: MaskRule = "half"


def check_mask_size(entry: Entry, mask_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    """DataError unless a mask of ``mask_size`` (h, w) fits its image of ``image_size``: the same size, or the same
    aspect ratio within :data:`ASPECT_TOLERANCE` (it is then resized with the image)."""
    (mh, mw), (h, w) = mask_size, image_size
    if (mh, mw) != (h, w) and abs(mw / mh - w / h) > ASPECT_TOLERANCE * (w / h):
        raise DataError(f"mask {entry.mask_path} is {mh}×{mw} but its image {entry.path} is {h}×{w} "
                        f"(different aspect ratio)")


def check_entry(entry: Entry) -> bool:
    """Fully decode an entry's image and mask and check the mask's size as :func:`load_entry` does; DataError naming
    the file at the first problem. Returns whether the entry is anomalous with an empty mask."""
    image_size = decoded_size(entry.path, "image")
    if entry.mask_path is None:
        return False
    mask = load_mask(entry.mask_path, entry.mask_rule)
    check_mask_size(entry, mask.shape, image_size)
    return entry.label == 1 and not mask.any()


def load_entry(entry: Entry, size: int) -> Sample:
    """Decode, resize (squash to size×size) and wrap one entry as a :class:`ssmad.core.Sample`."""
    image = read_unit(entry.path, "image")  # grey stays one plane until after the resize
    if image.ndim == 3 and image.shape[2] not in (1, 3):
        image = load_image(entry.path)
    h, w = image.shape[:2]
    if entry.mask_path is not None:
        mask = load_mask(entry.mask_path, entry.mask_rule)
        check_mask_size(entry, mask.shape, (h, w))
        mask_t = resize_mask(mask, size)
    else:
        mask_t = torch.zeros((1, size, size), dtype=torch.float32)
    if entry.label == 0:
        mask_t.zero_()
    return Sample(image=resize_image(image, size), mask=mask_t, label=int(entry.label), path=entry.path,
                  original_size=(int(h), int(w)), defect_type=entry.defect_type, category=entry.category)


class SampleList(Sequence[Sample]):
    """A sequence of samples backed by a file list; pixels are read on access (``len``/indexing/slicing).

    Picklable (for data-loader workers). ``labels``, ``paths``, ``defect_types`` need no decoding."""

    def __init__(self, entries: Sequence[Entry], image_size: int) -> None:
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> SampleList: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return SampleList(self.entries[index], self.image_size)
        return load_entry(self.entries[index], self.image_size)

    def __iter__(self) -> Iterator[Sample]:
        for entry in self.entries:
            yield load_entry(entry, self.image_size)

    def subset(self, indices: Sequence[int]) -> SampleList:
        return SampleList([self.entries[i] for i in indices], self.image_size)

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.entries]

    @property
    def defect_types(self) -> list[str]:
        return [e.defect_type for e in self.entries]

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return f"SampleList({len(self)} images: {len(self) - n_bad} normal, {n_bad} anomalous, size {self.image_size})"


class MemoryList(Sequence[Sample]):
    """A sequence of samples held in memory (the demo data); items are returned with copied tensors."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples: tuple[Sample, ...] = tuple(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return MemoryList(self.samples[index])
        s = self.samples[index]
        return Sample(image=s.image.clone(), mask=s.mask.clone(), label=s.label, path=s.path,
                      original_size=s.original_size, defect_type=s.defect_type, category=s.category)

    def subset(self, indices: Sequence[int]) -> MemoryList:
        return MemoryList([self.samples[i] for i in indices])

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    @property
    def defect_types(self) -> list[str]:
        return [s.defect_type for s in self.samples]

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return f"MemoryList({len(self)} images: {len(self) - n_bad} normal, {n_bad} anomalous)"


@attrs.define(kw_only=True, eq=False)
class AnomalyDataset:
    """What every ``dataset`` component returns.

    ``category`` is the selected category (None: every category of the root together, or a layout without
    categories); ``categories`` lists the categories available under the root ([] when the layout has none);
    ``train`` holds normal images only; ``test`` normal and anomalous ones. ``has_masks`` is False for
    image-level-only data (a folder of anomalous images without masks): their masks are all zero."""

    name: str
    root: str | None
    category: str | None
    categories: list[str]
    train: Sequence[Sample] = attrs.field(repr=False)
    test: Sequence[Sample] = attrs.field(repr=False)
    image_size: int
    has_masks: bool = True

    def summary(self) -> dict[str, Any]:
        # no getattr default here: it would be evaluated, decoding every test image, even when labels exist
        test_labels = list(self.test.labels) if hasattr(self.test, "labels") else [s.label for s in self.test]
        return {"name": self.name, "root": self.root, "category": self.category, "categories": list(self.categories),
                "image_size": self.image_size, "has_masks": self.has_masks, "train": len(self.train),
                "test_normal": test_labels.count(0), "test_anomalous": test_labels.count(1)}

    def verify(self, workers: int | None = None) -> None:
        """Check every listed training and test file before any training: each image and mask fully decoded (a
        truncated file passes a header check, not this) and each mask's size fitting its image by the rule the
        samples are loaded with. Problems raise one :class:`ssmad.core.DataError` naming the file(s) (the first
        few of all found); anomalous images whose mask is empty once read give one :class:`EmptyMaskWarning`.

        ``workers`` threads decode in parallel (default: one per CPU, at most 8). In-memory samples (the demo)
        have nothing to decode: only their masks are looked at."""
        entries = [e for part in (self.train, self.test) for e in getattr(part, "entries", ())]
        n = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
        results = _check_all(entries, n)
        problems = [r for r in results if isinstance(r, str)]
        if problems:
            shown = "; ".join(problems[:VERIFY_SHOWN])
            more = f" (and {len(problems) - VERIFY_SHOWN} more)" if len(problems) > VERIFY_SHOWN else ""
            head = f"{len(problems)} problems in the listed files: " if len(problems) > 1 else ""
            raise DataError(f"{self.name}: {head}{shown}{more}")
        empty = [e.mask_path or e.path for e, r in zip(entries, results) if r is True]
        anomalous = sum(e.label == 1 for e in entries)
        for part in (self.train, self.test):
            if isinstance(part, MemoryList):
                anomalous += sum(s.label == 1 for s in part.samples)
                empty += [s.path for s in part.samples if s.label == 1 and not bool(s.mask.any())]
        if empty:
            names = ", ".join(_short(p) for p in empty[:VERIFY_SHOWN])
            more = ", ..." if len(empty) > VERIFY_SHOWN else ""
            warnings.warn(f"{self.name}: {len(empty)} of {anomalous} anomalous images have an empty mask (no defect "
                          f"pixel once read; pixel metrics take them as defect-free): {names}{more}",
                          EmptyMaskWarning, stacklevel=2)


VERIFY_SHOWN = 3  # problems / empty masks named in one message


def _check_one(entry: Entry) -> str | bool:
    try:
        return check_entry(entry)
    except DataError as exc:
        return str(exc)


def _check_all(entries: Sequence[Entry], workers: int) -> list[str | bool]:
    """:func:`check_entry` of each entry, in order: the error message, or whether its anomalous mask is empty.
    PIL and numpy release the GIL while decoding, so threads decode in parallel."""
    if workers <= 1 or len(entries) < 2 * workers:
        return [_check_one(e) for e in entries]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssmad-verify") as pool:
        return list(pool.map(_check_one, entries))


def _short(path: str) -> str:
    """A file named by its folder and name (``crack/000_mask.png``), enough to find it in a warning."""
    parts = Path(path).parts
    return "/".join(parts[-2:])


# ---- shared helpers for the layouts ----------------------------------------------------------------------

def check_root(root: str | Path, kind: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{kind} dataset root not found: {path}")
    if not path.is_dir():
        raise DataError(f"{kind} dataset root is not a folder: {path}")
    return path


def unknown_category(kind: str, root: Path, category: str, available: Sequence[str]) -> DataError:
    return DataError(f"{kind}: unknown category {category!r} under {root}; available: {suggest(category, available)}")


def split_count(n: int, fraction: float) -> int:
    """⌊n · fraction⌋ robust to float round-off (714 · 0.2 → 142; 10 · 0.3 → 3)."""
    return int(math.floor(n * fraction + 1e-9))


def seeded_split(items: Sequence[Any], n_test: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Shuffle the indices of ``items`` (in the given order) with ``random.Random(seed)``; the first ``n_test``
    shuffled indices are the test part, the rest train. Both parts keep the original order."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    test_idx = set(order[:n_test])
    train = [x for i, x in enumerate(items) if i not in test_idx]
    test = [x for i, x in enumerate(items) if i in test_idx]
    return train, test


def find_mask(index: dict[str, Path], stem: str, suffixes: Sequence[str]) -> Path | None:
    """The mask for image ``stem`` in a stem → path index, trying ``stem + suffix`` for each suffix."""
    for suffix in suffixes:
        hit = index.get(stem + suffix)
        if hit is not None:
            return hit
    lowered = {k.lower(): v for k, v in index.items()}
    for suffix in suffixes:
        hit = lowered.get((stem + suffix).lower())
        if hit is not None:
            return hit
    return None


def collate_samples(samples: Sequence[Sample]) -> dict[str, Any]:
    """A ``DataLoader`` ``collate_fn``: ``image`` B×3×S×S, ``mask`` B×1×S×S, ``label`` B (int64) tensors, and
    lists ``path``, ``original_size``, ``defect_type``, ``category``."""
    if not samples:
        raise ValueError("collate_samples: empty batch")
    return {"image": torch.stack([s.image for s in samples]), "mask": torch.stack([s.mask for s in samples]),
            "label": torch.tensor([int(s.label) for s in samples], dtype=torch.int64),
            "path": [s.path for s in samples], "original_size": [tuple(s.original_size) for s in samples],
            "defect_type": [s.defect_type for s in samples], "category": [s.category for s in samples]}


def as_numpy_image(sample: Sample) -> np.ndarray:
    """A sample's image as H×W×3 float32 numpy (for the synthesisers)."""
    return sample.image.permute(1, 2, 0).contiguous().numpy()
