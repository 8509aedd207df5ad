"""Readers of the public benchmark layouts: MVTec AD, BTAD, VisA, Magnetic-tile defect (MTD), NanoTWICE.

Files are listed (and every anomalous image's mask located) when the dataset is built; pixels are decoded
only when a sample is accessed. Every layout error is a :class:`ssmad.core.DataError` naming the path.

Layouts and splits:

- ``mvtec``: ``<root>/<category>/train/good/*``, ``test/<defect>/*`` (``good`` = normal),
  ``ground_truth/<defect>/<stem>_mask.png`` (``<stem>.png`` accepted). ``root`` may also be one category folder.
- ``btad``: ``<root>/<NN>/train/ok``, ``test/ok``, ``test/ko``, ``ground_truth/ko/<stem>.<ext>`` — as
  distributed, product 01 has .bmp images with .png masks, 02 .png with .png, 03 .bmp with .bmp masks; any
  image extension is matched by stem. Anomalies get ``defect_type="ko"``.
- ``visa``: the official split CSV (``split_csv/1cls.csv``: object,split,label,image,mask, paths relative to the
  VisA folder). VisA masks store small label values (0 background, 1.. defect), so they are binarised at > 0.
  Defect descriptions come from ``<object>/image_anno.csv`` when present, else ``"anomaly"``.
- ``mtd``: ``<root>/MT_<class>/Imgs/<stem>.jpg`` with its mask ``<stem>.png`` beside it. No official split:
  the MT_Free images, sorted by stem, have their indices shuffled by ``random.Random(seed)`` (seed 0); the
  first ``len // 5`` (the test fraction is fixed at 1/5) are test-normal, the rest train. Every image of every
  other ``MT_*`` class is a test anomaly with ``defect_type`` = the class name without ``MT_`` (so the
  distributed MT_Free 714 → 572 train + 142 test-normal).
- ``nanotwice`` (Carrera et al., IEEE TII 2017; 45 grey SEM images of nanofibres as distributed):
  ``<root>/Normal/*.tif`` (5 defect-free images), ``<root>/Anomalous/images/*.tif`` (40 with defects) and
  their masks in ``<root>/Anomalous/gt/`` (matched by stem, also with ``_gt``/``_mask`` suffixes; if no name
  matches and the counts agree they are paired in sorted order, as distributed). Folder names are matched
  case-insensitively. Normal images are split like ``mtd`` (``len // 5`` test-normal by ``seed``: 4 train,
  1 test-normal for the distributed set).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ssmad.core import ConfigError, DataError, configclass, field, positive

from .base import AnomalyDataset, Entry, SampleList, check_root, find_mask, seeded_split, unknown_category
from .io import IMAGE_EXTENSIONS, index_by_stem, is_image_file, list_images

# ---- configs ---------------------------------------------------------------------------------------------


@configclass
class MVTecConfig:
    """MVTec AD: ``<root>/<category>/train/good``, ``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.png``."""

    root: str
    category: str | None = None  # None: every category under root together (or root is one category folder)
    image_size: int = field(default=256, validator=positive)


@configclass
class BTADConfig:
    """BTAD: ``<root>/<NN>/train/ok``, ``test/ok``, ``test/ko``, ``ground_truth/ko/<stem>.png|.bmp``."""

    root: str
    category: str | None = None
    image_size: int = field(default=256, validator=positive)


@configclass
class VisAConfig:
    """VisA with its split CSV (columns object,split,label,image,mask; paths relative to root)."""

    root: str  # the VisA folder (or the split CSV itself)
    category: str | None = None
    image_size: int = field(default=256, validator=positive)
    split_csv: str | None = None  # default <root>/split_csv/1cls.csv; absolute or relative to root


@configclass
class MTDConfig:
    """Magnetic-tile defect, native layout ``<root>/MT_<class>/Imgs/<stem>.jpg`` + ``<stem>.png`` mask."""

    root: str
    category: str | None = None  # the layout has no categories: leave unset
    image_size: int = field(default=256, validator=positive)
    seed: int = 0  # MT_Free split: random.Random(seed).shuffle, first len // 5 test-normal


@configclass
class NanoTWICEConfig:
    """NanoTWICE SEM images: ``<root>/Normal/*.tif``, ``<root>/Anomalous/images/*.tif``, ``Anomalous/gt/*``."""

    root: str
    category: str | None = None  # the layout has no categories: leave unset
    image_size: int = field(default=256, validator=positive)
    seed: int = 0  # Normal split: random.Random(seed).shuffle, first len // 5 test-normal


# ---- MVTec AD and BTAD: one folder per defect type ------------------------------------------------------

def _category_folders(kind: str, root: Path, good: str, category: str | None, layout: str
                      ) -> tuple[list[str], list[tuple[str, Path]]]:
    """(available categories, selected (name, folder) pairs). A root that is itself a category folder works."""
    if (root / "train" / good).is_dir():
        available = {root.name: root}
    else:
        available = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and (d / "train" / good).is_dir()}
    if not available:
        raise DataError(f"{kind}: {root} is not a {layout} folder: no <category>/train/{good} folder found")
    names = sorted(available)
    if category is None:
        return names, [(n, available[n]) for n in names]
    if category in available:
        return names, [(category, available[category])]
    if (root / category).is_dir():
        raise DataError(f"{kind}: {root / category} is not a {layout} category: missing train/{good}")
    raise unknown_category(kind, root, category, names)


def _defect_folders_category(kind: str, name: str, folder: Path, good: str, mask_suffixes: Sequence[str]
                             ) -> tuple[list[Entry], list[Entry]]:
    train = [Entry(path=str(p), label=0, category=name)
             for p in list_images(folder / "train" / good, what=f"{kind} training folder")]
    test_dir = folder / "test"
    if not test_dir.is_dir():
        raise DataError(f"{kind}: category folder {folder} has no test folder: {test_dir}")
    defect_dirs = sorted(d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not defect_dirs:
        raise DataError(f"{kind}: no test image folders (test/<defect>) in {test_dir}")
    test: list[Entry] = []
    for d in defect_dirs:
        images = list_images(d, what=f"{kind} test folder")
        if d.name == good:
            test += [Entry(path=str(p), label=0, category=name) for p in images]
            continue
        gt_dir = folder / "ground_truth" / d.name
        if not gt_dir.is_dir():
            raise DataError(f"{kind}: missing mask folder for the anomalous images of {d}: {gt_dir}")
        index = index_by_stem(p for p in gt_dir.iterdir() if is_image_file(p))
        for p in images:
            mask = find_mask(index, p.stem, mask_suffixes)
            if mask is None:
                expected = gt_dir / f"{p.stem}{mask_suffixes[0]}.png"
                raise DataError(f"{kind}: missing mask for anomalous image {p}: expected {expected}")
            test.append(Entry(path=str(p), label=1, defect_type=d.name, category=name, mask_path=str(mask)))
    return train, test


def _defect_folders(kind: str, cfg, good: str, mask_suffixes: Sequence[str], layout: str) -> AnomalyDataset:
    root = check_root(cfg.root, kind)
    names, selected = _category_folders(kind, root, good, cfg.category, layout)
    train: list[Entry] = []
    test: list[Entry] = []
    for name, folder in selected:
        tr, te = _defect_folders_category(kind, name, folder, good, mask_suffixes)
        train += tr
        test += te
    category = cfg.category if cfg.category is not None else (names[0] if len(names) == 1 else None)
    return AnomalyDataset(name=kind, root=str(root), category=category, categories=names,
                          train=SampleList(train, cfg.image_size), test=SampleList(test, cfg.image_size),
                          image_size=cfg.image_size)


def build_mvtec(cfg: MVTecConfig) -> AnomalyDataset:
    """MVTec AD (category folders with train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png)."""
    return _defect_folders("mvtec", cfg, "good", ("_mask", ""), "MVTec AD")


def build_btad(cfg: BTADConfig) -> AnomalyDataset:
    """BTAD / BeanTech (NN/train/ok, test/ok, test/ko, ground_truth/ko/<stem>.png or .bmp)."""
    return _defect_folders("btad", cfg, "ok", ("", "_mask"), "BTAD")


# ---- VisA ------------------------------------------------------------------------------------------------

VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def _visa_csv(cfg: VisAConfig) -> tuple[Path, Path]:
    """(data root, split CSV)."""
    given = Path(cfg.root).expanduser()
    if given.is_file():
        if cfg.split_csv is not None:
            raise ConfigError(f"visa: root {given} is a file, so split_csv must be left unset")
        return _visa_root_of(given), given
    root = check_root(given, "visa")
    if cfg.split_csv is not None:
        p = Path(cfg.split_csv).expanduser()
        candidates = [p] if p.is_absolute() else [root / p, p]
    else:
        candidates = [root / "split_csv" / "1cls.csv", root / "split_csv_1cls.csv", root / "1cls.csv"]
    for c in candidates:
        if c.is_file():
            return root, c
    raise DataError(f"visa: split CSV not found: {candidates[0]} (set split_csv)")


def _visa_root_of(csv_path: Path) -> Path:
    """The folder the CSV's relative image paths start from (the CSV's grandparent or parent)."""
    first = None
    with _open_csv(csv_path) as fh:
        for row in csv.DictReader(fh):
            first = (row.get("image") or "").strip()
            if first:
                break
    for base in (csv_path.parent.parent, csv_path.parent):
        if first and (base / first).is_file():
            return base
    return csv_path.parent.parent


def _open_csv(path: Path):
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"visa: cannot read split CSV {path}: {exc.strerror or exc}") from None


def _visa_defect_types(root: Path, category: str) -> dict[str, str]:
    """image path → defect description from ``<category>/image_anno.csv`` when present (VisA ships it)."""
    anno = root / category / "image_anno.csv"
    out: dict[str, str] = {}
    if not anno.is_file():
        return out
    try:
        with anno.open(newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                img, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
                if img and label and label != "normal":
                    out[img] = label
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return out


def build_visa(cfg: VisAConfig) -> AnomalyDataset:
    """VisA (split CSV with object,split,label,image,mask; masks hold label values: binarised at > 0)."""
    root, csv_path = _visa_csv(cfg)
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with _open_csv(csv_path) as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"visa: split CSV {csv_path} lacks column(s) {', '.join(missing)} "
                                f"(expected {','.join(VISA_COLUMNS)})")
            for line, row in enumerate(reader, start=2):
                rows.append((line, {k: (row.get(k) or "").strip() for k in VISA_COLUMNS}))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"visa: split CSV {csv_path} is not a valid CSV: {exc}") from None
    if not rows:
        raise DataError(f"visa: split CSV {csv_path} lists no images")
    names = sorted({r["object"] for _, r in rows if r["object"]})
    if cfg.category is not None and cfg.category not in names:
        raise unknown_category("visa", csv_path, cfg.category, names)
    selected = set(names) if cfg.category is None else {cfg.category}
    defect_types = {c: _visa_defect_types(root, c) for c in selected}
    train: list[Entry] = []
    test: list[Entry] = []
    for line, r in rows:
        if r["object"] not in selected:
            continue
        where = f"{csv_path} line {line}"
        if r["split"] not in ("train", "test"):
            raise DataError(f"visa: {where}: split must be train or test, got {r['split']!r}")
        if r["label"] not in ("normal", "anomaly"):
            raise DataError(f"visa: {where}: label must be normal or anomaly, got {r['label']!r}")
        image = root / r["image"]
        if not r["image"] or not image.is_file():
            raise DataError(f"visa: image listed at {where} not found: {image}")
        if r["label"] == "normal":
            entry = Entry(path=str(image), label=0, category=r["object"])
        else:
            if r["split"] == "train":
                raise DataError(f"visa: {where}: anomalous image in the train split (use the 1cls split CSV)")
            mask = root / r["mask"] if r["mask"] else None
            if mask is None or not mask.is_file():
                raise DataError(f"visa: missing mask for anomalous image {image} ({where}): "
                                f"{mask if mask is not None else 'no mask column value'}")
            defect = defect_types[r["object"]].get(r["image"], "anomaly")
            entry = Entry(path=str(image), label=1, defect_type=defect, category=r["object"],
                          mask_path=str(mask), mask_rule="nonzero")
        (train if r["split"] == "train" else test).append(entry)
    if not train:
        raise DataError(f"visa: split CSV {csv_path} lists no training images for {sorted(selected)}")
    if not test:
        raise DataError(f"visa: split CSV {csv_path} lists no test images for {sorted(selected)}")
    category = cfg.category if cfg.category is not None else (names[0] if len(names) == 1 else None)
    return AnomalyDataset(name="visa", root=str(root), category=category, categories=names,
                          train=SampleList(train, cfg.image_size), test=SampleList(test, cfg.image_size),
                          image_size=cfg.image_size)


# ---- MT defect -------------------------------------------------------------------------------------------

def _no_category(kind: str, category: str | None) -> None:
    if category is not None:
        raise ConfigError(f"{kind}: this layout has no categories; leave 'category' unset (got {category!r})")


def _mtd_class(folder: Path) -> tuple[list[Path], dict[str, Path]]:
    """(images, stem → mask) of one ``MT_<class>/Imgs`` folder: masks are the .png files, images the rest."""
    if not folder.is_dir():
        raise DataError(f"mtd: missing image folder {folder}")
    files = [p for p in folder.iterdir() if is_image_file(p) and p.is_file()]
    images = sorted(p for p in files if p.suffix.lower() != ".png")
    if not images:
        raise DataError(f"mtd: no images (.jpg) in {folder}")
    return images, index_by_stem(p for p in files if p.suffix.lower() == ".png")


def build_mtd(cfg: MTDConfig) -> AnomalyDataset:
    """Magnetic-tile defect (MT_Free split train / test-normal by seed, every other MT_* class in test)."""
    _no_category("mtd", cfg.category)
    root = check_root(cfg.root, "mtd")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("MT_"))
    if not any(d.name == "MT_Free" for d in classes):
        raise DataError(f"mtd: {root} is not a Magnetic-tile-defect folder: no MT_Free/Imgs")
    free, _ = _mtd_class(root / "MT_Free" / "Imgs")
    free.sort(key=lambda p: p.stem)
    train_paths, test_free = seeded_split(free, len(free) // 5, cfg.seed)
    train = [Entry(path=str(p), label=0) for p in train_paths]
    test = [Entry(path=str(p), label=0) for p in test_free]
    for d in classes:
        if d.name == "MT_Free":
            continue
        images, masks = _mtd_class(d / "Imgs")
        defect = d.name[len("MT_"):]
        for p in images:
            mask = masks.get(p.stem)
            if mask is None:
                raise DataError(f"mtd: missing mask for anomalous image {p}: expected {p.with_suffix('.png')}")
            test.append(Entry(path=str(p), label=1, defect_type=defect, mask_path=str(mask)))
    if not train:
        raise DataError(f"mtd: too few defect-free images for a training set in {root / 'MT_Free' / 'Imgs'}")
    return AnomalyDataset(name="mtd", root=str(root), category=None, categories=[],
                          train=SampleList(train, cfg.image_size), test=SampleList(test, cfg.image_size),
                          image_size=cfg.image_size)


# ---- NanoTWICE -------------------------------------------------------------------------------------------

NANOTWICE_MASK_SUFFIXES = ("", "_gt", "_GT", "-gt", "gt", "_mask", "_Mask", "-mask")


def _child(folder: Path, name: str) -> Path:
    """``folder/name``, matching the name case-insensitively (Normal, normal...)."""
    exact = folder / name
    if exact.is_dir():
        return exact
    if folder.is_dir():
        for d in sorted(folder.iterdir()):
            if d.is_dir() and d.name.lower() == name.lower():
                return d
    return exact


def build_nanotwice(cfg: NanoTWICEConfig) -> AnomalyDataset:
    """NanoTWICE (Normal/ split train / test-normal by seed; Anomalous/images with masks in Anomalous/gt)."""
    _no_category("nanotwice", cfg.category)
    root = check_root(cfg.root, "nanotwice")
    normal_dir = _child(root, "Normal")
    anomalous_dir = _child(root, "Anomalous")
    if not normal_dir.is_dir() or not anomalous_dir.is_dir():
        raise DataError(f"nanotwice: {root} is not a NanoTWICE folder: expected Normal/ and Anomalous/images, "
                        f"Anomalous/gt")
    normal = list_images(normal_dir, what="nanotwice normal folder")
    images = list_images(_child(anomalous_dir, "images"), what="nanotwice anomalous image folder")
    gt_dir = _child(anomalous_dir, "gt")
    gt_files = list_images(gt_dir, what="nanotwice mask folder")
    index = index_by_stem(gt_files)
    masks = {p: find_mask(index, p.stem, NANOTWICE_MASK_SUFFIXES) for p in images}
    if all(m is None for m in masks.values()) and len(gt_files) == len(images):
        masks = dict(zip(images, gt_files))  # names share nothing: pair in sorted order (as distributed)
    train_paths, test_normal = seeded_split(normal, len(normal) // 5, cfg.seed)
    test = [Entry(path=str(p), label=0) for p in test_normal]
    for p in images:
        m = masks[p]
        if m is None:
            raise DataError(f"nanotwice: missing mask for anomalous image {p}: expected {gt_dir / p.stem}.png")
        test.append(Entry(path=str(p), label=1, defect_type="anomaly", mask_path=str(m)))
    if not train_paths:
        raise DataError(f"nanotwice: too few normal images for a training set in {normal_dir}")
    return AnomalyDataset(name="nanotwice", root=str(root), category=None, categories=[],
                          train=SampleList([Entry(path=str(p), label=0) for p in train_paths], cfg.image_size),
                          test=SampleList(test, cfg.image_size), image_size=cfg.image_size)


__all__ = [
    "IMAGE_EXTENSIONS", "BTADConfig", "MTDConfig", "MVTecConfig", "NanoTWICEConfig", "VisAConfig", "build_btad",
    "build_mtd", "build_mvtec", "build_nanotwice", "build_visa",
]
