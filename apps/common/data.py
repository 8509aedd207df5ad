"""Datasets for the apps: open the configured dataset, carve a validation split, make loaders."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssmad.core import ConfigError, DataError, MissingParameterError, Sample


def open_data(config: dict[str, Any], verify: bool = False):
    """The dataset object of ``[data]``: ``spec = "KIND:PATH"`` (or ``demo``), ``category``, ``image_size``,
    and ``[data.params]`` for the dataset's own options.

    ``verify`` (for training): every listed image and mask is decoded and each mask's size checked now
    (``AnomalyDataset.verify``), so a bad file is a DataError before training, not hours into it."""
    from ssmad.datasets import open_dataset

    data = config["data"]
    params = dict(data.get("params", {}))
    if data.get("category"):
        params["category"] = data["category"]
    params.setdefault("image_size", int(data["image_size"]))
    try:
        dataset = open_dataset(str(data["spec"]), **params)
    except MissingParameterError as exc:
        # the dataset's own options come from [data.params], on the command line --data-param KEY=VALUE
        raise MissingParameterError(f"{exc} (give it in [data.params] or with --data-param KEY=VALUE)",
                                    exc.names) from None
    if verify:
        dataset.verify()
    return dataset


def split_validation(train: Sequence[Sample], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation) of a seeded split of the normal training images; validation ≥ 1 image
    when ``fraction > 0`` and at least 2 images exist."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"config: train.val_fraction must be in [0, 1), got {fraction}")
    n = len(train)
    if n == 0:
        raise DataError("the training set is empty: no normal images found")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    return sorted(order[n_val:]), sorted(order[:n_val])


class TrainItems(Dataset):
    """Training items: ``method.train_item(sample, rng)`` with an rng fixed by (seed, epoch, index), so an
    epoch is reproducible and resuming replays the same synthetic anomalies."""

    def __init__(self, samples: Sequence[Sample], indices: list[int], item: Callable, seed: int):
        self.samples, self.indices, self.item, self.seed = samples, indices, item, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return self.item(self.samples[self.indices[i]], rng)


class LazyImages(Sequence):
    """The image tensors of ``samples[indices]``, each read when indexed (a slice gives a list): the training
    images for :meth:`Method.after_training` without holding them all."""

    def __init__(self, samples, indices: list[int]) -> None:
        self.samples, self.indices = samples, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.samples[k].image for k in self.indices[i]]
        return self.samples[self.indices[i]].image


class Images(Dataset):
    """Plain (image, mask, label, index) items for inference."""

    def __init__(self, samples: Sequence[Sample], indices: list[int] | None = None):
        self.samples = samples
        self.indices = list(range(len(samples))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[self.indices[i]]
        return {"image": s.image, "mask": s.mask, "label": torch.tensor(int(s.label)), "index": self.indices[i]}


def loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0,
           drop_last: bool = False, sampler=None) -> DataLoader:
    """A DataLoader of ``dataset``; ``sampler`` (e.g. a ``DistributedSampler``) gives the order instead of
    ``shuffle``. The loader's generator (seeded ``seed``) seeds the workers."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=g,
                      drop_last=drop_last, persistent_workers=False, sampler=sampler)


def image_batches(samples: Sequence, size: int, device) -> Iterator[tuple[list, torch.Tensor]]:
    """``(chunk, images)`` over ``samples`` (a list or a dataset, read a chunk at a time): the chunk's samples and
    their images stacked on ``device``."""
    for start in range(0, len(samples), size):
        chunk = [samples[i] for i in range(start, min(start + size, len(samples)))]
        yield chunk, torch.stack([s.image for s in chunk]).to(device)
