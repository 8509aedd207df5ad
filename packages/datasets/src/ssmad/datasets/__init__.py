"""ssmad datasets: readers of anomaly-detection datasets and the offline demo data.

Registered as kind ``dataset`` (``build("dataset", name, root=..., category=..., image_size=256)``): ``mvtec``,
``btad``, ``visa``, ``mtd``, ``nanotwice``, ``folder``, ``demo``. Each returns an :class:`AnomalyDataset` with
``name``, ``category``, ``categories``, ``has_masks`` and lazily loading ``train``/``test`` sequences of
:class:`ssmad.core.Sample` (image 3×S×S and mask 1×S×S float32 tensors, squash-resized).

    from ssmad.datasets import open_dataset, load_image
    ds = open_dataset("mvtec:/data/mvtec", category="carpet")
    ds = open_dataset("demo")
    ds.verify()  # before training: every file decoded, every mask's size checked (DataError naming the file)
"""

from .base import (
    AnomalyDataset,
    EmptyMaskWarning,
    Entry,
    MemoryList,
    SampleList,
    as_numpy_image,
    collate_samples,
    load_entry,
    seeded_split,
)
from .demo import DEFECT_KINDS, DEMO_TEXTURES, DemoConfig, build_demo
from .folder import FolderConfig, build_folder
from .io import (
    IMAGE_EXTENSIONS,
    decoded_size,
    list_images,
    load_image,
    load_mask,
    read_size,
    read_unit,
    resize_image,
    resize_mask,
)
from .layouts import (
    BTADConfig,
    MTDConfig,
    MVTecConfig,
    NanoTWICEConfig,
    VisAConfig,
    build_btad,
    build_mtd,
    build_mvtec,
    build_nanotwice,
    build_visa,
)
from .open import open_dataset, parse_spec

__version__ = "0.3.0"

__all__ = [
    "DEFECT_KINDS", "DEMO_TEXTURES", "IMAGE_EXTENSIONS", "AnomalyDataset", "BTADConfig", "DemoConfig",
    "EmptyMaskWarning", "Entry", "FolderConfig", "MTDConfig", "MVTecConfig", "MemoryList", "NanoTWICEConfig",
    "SampleList", "VisAConfig", "as_numpy_image", "build_btad", "build_demo", "build_folder", "build_mtd",
    "build_mvtec", "build_nanotwice", "build_visa", "collate_samples", "decoded_size", "list_images", "load_entry",
    "load_image", "load_mask", "open_dataset", "parse_spec", "read_size", "read_unit", "resize_image", "resize_mask",
    "seeded_split",
]
