"""A run's images by use (``split.json``: train, validation, test) and the checks that a dataset listed again still
splits as the run was trained: nothing the run trained on may become a test image."""

from __future__ import annotations

import json
from pathlib import Path

from ssmad.core import DataError
from ssmad.core.files import atomic_write_text

SPLIT_FILE = "split.json"


def write_split(run_dir: Path, data, train_idx: list[int], val_idx: list[int]) -> None:
    """The run's images by use (``split.json``: train, validation, test), for the user and for :func:`check_split`.
    Datasets whose samples have no file paths (none so far) write nothing."""
    train_paths = getattr(data.train, "paths", None)
    test_paths = getattr(data.test, "paths", None)
    if train_paths is None or test_paths is None:
        return
    split = {"root": getattr(data, "root", None), "train": [train_paths[i] for i in train_idx],
             "validation": [train_paths[i] for i in val_idx], "test": list(test_paths)}
    atomic_write_text(run_dir / SPLIT_FILE, json.dumps(split, indent=1) + "\n")


def _stored_split(path: Path, data) -> dict[str, set[str]]:
    """The image sets of ``split.json`` (train, validation, test), each path where it is now when the dataset moved
    (the stored root replaced by the dataset's). Raises OSError, ValueError, KeyError or TypeError when unreadable."""
    split = json.loads(path.read_text())
    old_root, new_root = split.get("root"), getattr(data, "root", None)

    def now(p: str) -> str:
        return _moved(p, Path(old_root), Path(new_root)) if old_root and new_root else str(Path(p))

    return {key: {now(p) for p in split[key]} for key in ("train", "validation", "test")}


def _read_split(run_dir: Path, data) -> tuple[dict[str, set[str]] | None, list[str]]:
    """(:func:`_stored_split` of the run, notes): (None, []) for a run without ``split.json`` or a dataset without
    file paths, (None, [why]) when it cannot be read."""
    path = run_dir / SPLIT_FILE
    if not path.is_file() or getattr(data.test, "paths", None) is None:
        return None, []
    try:
        return _stored_split(path, data), []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, [f"{path}: unreadable ({exc}); the test split was not compared with training time's"]


def check_split(run_dir: Path, data) -> list[str]:
    """Compare the test split as the dataset lists it now with the one the run was trained with (``split.json``;
    runs without it are not checked; a dataset that moved is followed by the root stored with it). A dataset split
    by a seed (a ``folder`` of normal images without ``test_normal``, ``mtd``, ``nanotwice``) is split again from
    its current listing: images added to or removed from the folder move others between training and test. An
    image the run trained on (or held out) that is now a test image is a DataError; any other difference is
    returned as a note."""
    split, notes = _read_split(run_dir, data)
    return notes if split is None else _compare_test(run_dir / SPLIT_FILE, split, data)


def _compare_test(path: Path, split: dict[str, set[str]], data) -> list[str]:
    """:func:`check_split` on the run's split as read."""
    seen, before = split["train"] | split["validation"], split["test"]
    now = {str(Path(p)) for p in data.test.paths}
    if not (now & (before | seen)):
        return [f"none of the test images is where it was at training time (the data moved? runs trained before "
                f"apps 0.9.0 cannot follow it); the test split was not compared with training time's ({path})"]
    leaked = sorted(now & seen)
    if leaked:
        raise DataError(f"{len(leaked)} test image(s) were training images of this run (e.g. {leaked[0]}): the "
                        f"dataset's folder changed since training and its split, made from the current listing, "
                        f"moved them; restore the folder as it was (the run's images by use are in {path}) or "
                        f"give the test images their own folder (test_normal)")
    if now != before:
        return [f"the test split differs from training time's: {len(now - before)} image(s) added, "
                f"{len(before - now)} missing (the run's test images are listed in {path})"]
    return []


def check_resumed_split(run_dir: Path, data, train_idx: list[int], val_idx: list[int]) -> list[str]:
    """Before a resumed run continues: :func:`check_split` (training images now in the test split are a
    DataError), and a note when the training or held-out images differ from those it started with."""
    split, notes = _read_split(run_dir, data)
    if split is None:
        return notes
    path, train_paths = run_dir / SPLIT_FILE, getattr(data.train, "paths", None)
    notes = _compare_test(path, split, data)
    if train_paths is None:
        return notes
    for key, idx in (("train", train_idx), ("validation", val_idx)):
        now = {str(Path(train_paths[i])) for i in idx}
        if now != split[key]:
            notes.append(f"the {key} images differ from those the run started with: {len(now - split[key])} "
                         f"added, {len(split[key] - now)} missing; it continues on the current ones (which {path} "
                         f"will list)")
    return notes


def _moved(path: str, old_root: Path, new_root: Path) -> str:
    """``path`` under ``old_root`` as the same file under ``new_root`` (unchanged when outside ``old_root``; the
    same path when the roots are one)."""
    try:
        return str(new_root / Path(path).relative_to(old_root))
    except ValueError:
        return str(Path(path))
