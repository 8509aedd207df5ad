"""``folder``: your own folders of images (normal for training; optional test-normal, anomalous and masks).

- ``normal``: folder(s) of defect-free images. Without ``test_normal`` they are split deterministically:
  ``random.Random(seed)`` shuffles their indices and the first ⌊n · test_fraction⌋ become test-normal images.
- ``abnormal``: folder(s) of anomalous test images, listed recursively; the defect type of an image is the
  name of its first sub-folder under the abnormal folder (or the abnormal folder's own name).
- ``masks``: folder(s) of masks, matched to an anomalous image by its path relative to the abnormal folder,
  then by stem (when unambiguous), each with an optional ``_mask`` suffix
  (``scratch/001.png`` ↔ ``scratch/001_mask.png``).
  With ``masks`` unset, masks stored beside their images (``<stem>_mask.*``) are used; when no anomalous image
  has one the dataset is image-level only (``has_masks=False``, masks all zero). A mask missing while others
  exist (or while ``masks`` is given) is an error.
- ``root``: optional prefix for relative folder paths. Files named ``*_mask.*`` are never taken as images.
"""

from __future__ import annotations

from pathlib import Path

from ssmad.core import DataError, configclass, field, positive

from .base import AnomalyDataset, Entry, SampleList, check_root, seeded_split, split_count
from .io import IMAGE_EXTENSIONS, list_images

Paths = str | tuple[str, ...]


def _fraction(inst, attribute, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"parameter {attribute.name!r} must be in [0, 1), got {value!r}")


@configclass
class FolderConfig:
    """Generic folders of images."""

    normal: str | tuple[str, ...]                      # training normal folder(s)
    test_normal: str | tuple[str, ...] | None = None   # test normal folder(s); None: split off `normal`
    abnormal: str | tuple[str, ...] | None = None      # anomalous test folder(s)
    masks: str | tuple[str, ...] | None = None         # mask folder(s); None: <stem>_mask.* beside the images
    root: str | None = None                            # prefix for relative paths
    category: str | None = None                        # a label for the samples (no category folders)
    image_size: int = field(default=256, validator=positive)
    seed: int = 0
    test_fraction: float = field(default=0.2, validator=_fraction)


def _dirs(value: Paths | None, root: Path | None) -> list[Path]:
    if value is None:
        return []
    items = (value,) if isinstance(value, str) else tuple(value)
    out = []
    for item in items:
        p = Path(item).expanduser()
        out.append(root / p if root is not None and not p.is_absolute() else p)
    return out


def _strip_mask(name: str) -> str:
    return name[: -len("_mask")] if name.lower().endswith("_mask") else name


class _MaskIndex:
    """Mask files under the mask folders, by relative path and by stem (``_mask`` suffix stripped)."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self.by_rel: dict[str, Path] = {}
        stems: dict[str, list[Path]] = {}
        for folder in folders:
            for p in list_images(folder, recursive=True, what="folder mask folder"):
                rel = p.relative_to(folder).with_suffix("").as_posix()
                rel = _strip_mask(rel)
                self.by_rel.setdefault(rel, p)
                stems.setdefault(_strip_mask(p.stem), []).append(p)
        self.by_stem = {k: v[0] for k, v in stems.items() if len(v) == 1}  # ambiguous stems need the path

    def find(self, image: Path, base: Path, unique_stem: bool) -> Path | None:
        """By relative path; by stem only when the stem names one image and one mask (no wrong pairing)."""
        rel = image.relative_to(base).with_suffix("").as_posix()
        hit = self.by_rel.get(rel)
        if hit is None and unique_stem:
            hit = self.by_stem.get(image.stem)
        return hit


def _beside(image: Path) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for cand in (image.with_name(f"{image.stem}_mask{ext}"), image.with_name(f"{image.stem}_mask{ext.upper()}")):
            if cand.is_file():
                return cand
    return None


def _list(folders: list[Path], what: str) -> list[tuple[Path, Path]]:
    """(image, its base folder) for every image under the folders, in folder order then sorted."""
    out = []
    for folder in folders:
        out += [(p, folder) for p in list_images(folder, recursive=True, exclude_mask_suffix=True, what=what)]
    return out


def build_folder(cfg: FolderConfig) -> AnomalyDataset:
    """Your own image folders (normal / test-normal / anomalous / masks), split by seed when needed."""
    root = check_root(cfg.root, "folder") if cfg.root is not None else None
    label = cfg.category or ""
    normal = [p for p, _ in _list(_dirs(cfg.normal, root), "folder normal image folder")]
    if cfg.test_normal is not None:
        train_paths = normal
        test_normal = [p for p, _ in _list(_dirs(cfg.test_normal, root), "folder test-normal image folder")]
    else:
        train_paths, test_normal = seeded_split(normal, split_count(len(normal), cfg.test_fraction), cfg.seed)
    if not train_paths:
        raise DataError(f"folder: no training images left after the test split of {_dirs(cfg.normal, root)[0]}")
    overlap = {p.resolve() for p in train_paths} & {p.resolve() for p in test_normal}
    if overlap:
        raise DataError(f"folder: {len(overlap)} image(s) are both training and test images, e.g. {min(overlap)}")

    abnormal = _list(_dirs(cfg.abnormal, root), "folder anomalous image folder")
    mask_dirs = _dirs(cfg.masks, root)
    index = _MaskIndex(mask_dirs) if mask_dirs else None
    stem_count: dict[str, int] = {}
    for p, _ in abnormal:
        stem_count[p.stem] = stem_count.get(p.stem, 0) + 1
    found: list[Path | None] = []
    for p, base in abnormal:
        found.append(index.find(p, base, stem_count[p.stem] == 1) if index is not None else _beside(p))
    has_masks = bool(abnormal) and any(m is not None for m in found)
    if has_masks or index is not None:
        for (p, _base), m in zip(abnormal, found):
            if m is None:
                where = (", ".join(str(d) for d in mask_dirs) if mask_dirs else str(p.parent))
                raise DataError(f"folder: missing mask for anomalous image {p}: no {p.stem}[_mask].* in {where}")

    test = [Entry(path=str(p), label=0, category=label) for p in test_normal]
    for (p, base), m in zip(abnormal, found):
        rel = p.relative_to(base).parts
        defect = rel[0] if len(rel) > 1 else base.name
        test.append(Entry(path=str(p), label=1, defect_type=defect, category=label,
                          mask_path=str(m) if m is not None else None))
    return AnomalyDataset(name="folder", root=str(root) if root is not None else None, category=cfg.category,
                          categories=[], train=SampleList([Entry(path=str(p), label=0, category=label)
                                                           for p in train_paths], cfg.image_size),
                          test=SampleList(test, cfg.image_size), image_size=cfg.image_size, has_masks=has_masks)
