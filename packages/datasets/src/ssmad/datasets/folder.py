"""``folder``: your own folders of images (normal for training; optional test-normal, anomalous and masks).

- ``normal``: folder(s) of defect-free images. Without ``test_normal`` they are split deterministically:
  ``random.Random(seed)`` shuffles their indices and the first ⌊n · test_fraction⌋ become test-normal images.
- ``abnormal``: folder(s) of anomalous test images, listed recursively; the defect type of an image is the
  name of its first sub-folder under the abnormal folder (or the abnormal folder's own name).
  Folders given as ``normal``, ``test_normal`` or ``masks`` that lie inside an abnormal folder are left out of
  its listing, so an MVTec-like tree works as is: ``normal=train/good test_normal=test/good abnormal=test
  masks=ground_truth`` lists ``test/good`` as test-normal only and the other ``test/<defect>`` as anomalous.
- ``masks``: folder(s) of masks, matched to an anomalous image by its path relative to the abnormal folder,
  then by stem (when unambiguous), each with an optional ``_mask`` suffix
  (``scratch/001.png`` ↔ ``scratch/001_mask.png``); names are compared exactly first, then ignoring case.
  With ``masks`` unset, masks stored beside their images (``<stem>_mask.*``, any case: ``001_MASK.png``) are
  used; when no anomalous image has one the dataset is image-level only (``has_masks=False``, masks all zero).
  A mask missing while others exist (or while ``masks`` is given) is an error.
- ``root``: optional prefix for relative folder paths. Files named ``*_mask.*`` (any case) are never taken as
  images.

An image has one role: training, test-normal, anomalous or mask. A file listed in two roles otherwise (the
same folder given twice, an abnormal or masks folder inside a normal one...) is a DataError naming the file and
both roles.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssmad.core import DataError, configclass, field, positive

from .base import AnomalyDataset, Entry, SampleList, check_root, seeded_split, split_count
from .io import IMAGE_EXTENSIONS, is_image_file, list_images

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
    """Mask files under the mask folders, by relative path and by stem (``_mask`` suffix stripped), each also
    ignoring case."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self.by_rel: dict[str, Path] = {}
        self.by_rel_lower: dict[str, Path] = {}
        stems: dict[str, list[Path]] = {}
        stems_lower: dict[str, list[Path]] = {}
        for folder in folders:
            for p in list_images(folder, recursive=True, what="folder mask folder"):
                rel = _strip_mask(p.relative_to(folder).with_suffix("").as_posix())
                self.by_rel.setdefault(rel, p)
                self.by_rel_lower.setdefault(rel.lower(), p)
                stems.setdefault(_strip_mask(p.stem), []).append(p)
                stems_lower.setdefault(_strip_mask(p.stem).lower(), []).append(p)
        self.by_stem = {k: v[0] for k, v in stems.items() if len(v) == 1}  # ambiguous stems need the path
        self.by_stem_lower = {k: v[0] for k, v in stems_lower.items() if len(v) == 1}

    def find(self, image: Path, base: Path, stems: dict[tuple[bool, str], int]) -> Path | None:
        """By relative path; by stem only when the stem names one image and one mask (no wrong pairing); exact
        names first, then ignoring case. ``stems``: how many anomalous images have each stem (``(False, stem)``)
        and each lower-cased stem (``(True, stem.lower())``)."""
        rel = image.relative_to(base).with_suffix("").as_posix()
        hit = self.by_rel.get(rel) or self.by_rel_lower.get(rel.lower())
        if hit is None and stems[False, image.stem] == 1:
            hit = self.by_stem.get(image.stem)
        if hit is None and stems[True, image.stem.lower()] == 1:
            hit = self.by_stem_lower.get(image.stem.lower())
        return hit


class _Beside:
    """Masks stored beside their images, ``<stem>_mask.<ext>`` matched ignoring case (as the ``*_mask`` files are
    left out of the images): the exact ``_mask`` spelling first, then by extension order, then by name."""

    def __init__(self) -> None:
        self.folders: dict[Path, dict[str, list[Path]]] = {}

    def find(self, image: Path) -> Path | None:
        index = self.folders.get(image.parent)
        if index is None:
            index = {}
            for p in sorted(image.parent.iterdir()):
                if is_image_file(p) and p.stem.lower().endswith("_mask") and p.is_file():
                    index.setdefault(p.stem.lower(), []).append(p)
            self.folders[image.parent] = index
        found = index.get(f"{image.stem}_mask".lower())
        if not found:
            return None
        exts = [e.lower() for e in IMAGE_EXTENSIONS]
        return min(found, key=lambda p: (p.stem != f"{image.stem}_mask",
                                         exts.index(p.suffix.lower()) if p.suffix.lower() in exts else len(exts),
                                         p.name))


def _inside(folder: Path, outer: Path) -> tuple[str, ...] | None:
    """``folder``'s path parts relative to ``outer`` when it lies strictly inside it (symbolic links resolved)."""
    try:
        rel = folder.resolve().relative_to(outer.resolve())
    except (ValueError, OSError):
        return None
    return rel.parts or None


def _list(folders: list[Path], what: str, leave_out: Sequence[Path] = ()) -> list[tuple[Path, Path]]:
    """(image, its base folder) for every image under the folders, in folder order then sorted; the ``leave_out``
    folders that lie inside one of them are skipped."""
    out = []
    for folder in folders:
        images = list_images(folder, recursive=True, exclude_mask_suffix=True, what=what)
        skip = [parts for parts in (_inside(d, folder) for d in leave_out) if parts]
        if skip:
            images = [p for p in images if not any(p.relative_to(folder).parts[: len(t)] == t for t in skip)]
            if not images:
                raise DataError(f"no images in {what} {folder} outside the folders given as normal, test_normal "
                                f"or masks ({', '.join(str(d) for d in leave_out)})")
        out += [(p, folder) for p in images]
    return out


class _Roles:
    """Each listed file's single role; a second role (or the same role twice) is a DataError naming both."""

    def __init__(self) -> None:
        self.seen: dict[Path, tuple[str, str]] = {}

    def add(self, path: Path, role: str, source: str, once: bool = True) -> None:
        key = path.resolve()
        if key in self.seen:
            first, where = self.seen[key]
            if first == role and not once:
                return
            if first == role:
                raise DataError(f"folder: image {path} is listed twice as {role} ({where}; {source}); "
                                "an image can be listed once")
            raise DataError(f"folder: image {path} is listed as both {first} ({where}) and {role} ({source}); "
                            "an image can have one role only")
        self.seen[key] = (role, source)


def build_folder(cfg: FolderConfig) -> AnomalyDataset:
    """Your own image folders (normal / test-normal / anomalous / masks), split by seed when needed."""
    root = check_root(cfg.root, "folder") if cfg.root is not None else None
    label = cfg.category or ""
    normal_dirs, test_dirs = _dirs(cfg.normal, root), _dirs(cfg.test_normal, root)
    mask_dirs = _dirs(cfg.masks, root)
    normal = _list(normal_dirs, "folder normal image folder")
    if cfg.test_normal is not None:
        train, test_normal = normal, _list(test_dirs, "folder test-normal image folder")
    else:
        train, test_normal = seeded_split(normal, split_count(len(normal), cfg.test_fraction), cfg.seed)
    if not train:
        raise DataError(f"folder: no training images left after the test split of {normal_dirs[0]}")
    # normal / test-normal / mask folders inside an abnormal folder are theirs, not anomalies (test/good in test/)
    abnormal = _list(_dirs(cfg.abnormal, root), "folder anomalous image folder",
                     leave_out=[*normal_dirs, *test_dirs, *mask_dirs])
    index = _MaskIndex(mask_dirs) if mask_dirs else None
    beside = _Beside()
    stems: dict[tuple[bool, str], int] = {}
    for p, _ in abnormal:
        for key in ((False, p.stem), (True, p.stem.lower())):
            stems[key] = stems.get(key, 0) + 1
    found = [index.find(p, base, stems) if index is not None else beside.find(p) for p, base in abnormal]

    roles = _Roles()
    test_option = "test_normal" if test_dirs else "normal"
    for role, option, items in (("training", "normal", train), ("test-normal", test_option, test_normal),
                                ("anomalous", "abnormal", abnormal)):
        for p, base in items:
            roles.add(p, role, f"{option} folder {base}")
    for (p, _), m in zip(abnormal, found):
        if m is not None:
            roles.add(m, "mask", f"the mask of {p}", once=False)

    has_masks = bool(abnormal) and any(m is not None for m in found)
    if has_masks or index is not None:
        for (p, _base), m in zip(abnormal, found):
            if m is None:
                where = (", ".join(str(d) for d in mask_dirs) if mask_dirs else str(p.parent))
                raise DataError(f"folder: missing mask for anomalous image {p}: no {p.stem}[_mask].* in {where}")

    test = [Entry(path=str(p), label=0, category=label) for p, _ in test_normal]
    for (p, base), m in zip(abnormal, found):
        rel = p.relative_to(base).parts
        defect = rel[0] if len(rel) > 1 else base.name
        test.append(Entry(path=str(p), label=1, defect_type=defect, category=label,
                          mask_path=str(m) if m is not None else None))
    return AnomalyDataset(name="folder", root=str(root) if root is not None else None, category=cfg.category,
                          categories=[], train=SampleList([Entry(path=str(p), label=0, category=label)
                                                           for p, _ in train], cfg.image_size),
                          test=SampleList(test, cfg.image_size), image_size=cfg.image_size, has_masks=has_masks)
