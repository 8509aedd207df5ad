"""split.json: the run's images by use, and the test-time comparison with the dataset's current listing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from apps.common.data import split_validation
from apps.common.split import SPLIT_FILE, check_split, write_split
from ssmad.core import DataError


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{name}.png")


def _open(root):
    from ssmad.datasets import open_dataset

    return open_dataset(f"folder:{root}", normal="good", image_size=32, test_fraction=0.3)


def test_split_is_written_and_an_unchanged_folder_passes(tmp_path):
    _images(tmp_path / "data" / "good", [f"{i:03d}" for i in range(10)])
    data = _open(tmp_path / "data")
    train_idx, val_idx = split_validation(data.train, 0.2, 0)
    write_split(tmp_path, data, train_idx, val_idx)
    split = json.loads((tmp_path / SPLIT_FILE).read_text())
    assert len(split["train"]) == len(train_idx) and len(split["validation"]) == len(val_idx)
    assert split["test"] == data.test.paths and not set(split["test"]) & set(split["train"] + split["validation"])
    assert check_split(tmp_path, _open(tmp_path / "data")) == []


def test_images_added_to_a_seeded_split_folder_cannot_leak_training_images_into_the_test(tmp_path):
    """The audit's case: a folder of normal images split by seed; four images added after training moved
    training images into the test split, and `test` reported metrics on them without a word."""
    _images(tmp_path / "data" / "good", [f"{i:03d}" for i in range(12)])
    data = _open(tmp_path / "data")
    train_idx, val_idx = split_validation(data.train, 0.2, 0)
    write_split(tmp_path, data, train_idx, val_idx)
    _images(tmp_path / "data" / "good", [f"{i:03d}" for i in range(12, 16)])
    with pytest.raises(DataError, match="were training images of this run"):
        check_split(tmp_path, _open(tmp_path / "data"))


def test_other_changes_are_notes_and_old_runs_are_not_checked(tmp_path):
    _images(tmp_path / "data" / "good", [f"{i:03d}" for i in range(10)])
    data = _open(tmp_path / "data")
    write_split(tmp_path, data, *split_validation(data.train, 0.2, 0))
    split = json.loads((tmp_path / SPLIT_FILE).read_text())
    split["test"] = split["test"][1:]                        # one test image the run did not have
    (tmp_path / SPLIT_FILE).write_text(json.dumps(split))
    notes = check_split(tmp_path, _open(tmp_path / "data"))
    assert len(notes) == 1 and "1 image(s) added, 0 missing" in notes[0]
    (tmp_path / SPLIT_FILE).unlink()
    assert check_split(tmp_path, _open(tmp_path / "data")) == []


def test_a_moved_dataset_is_followed_from_the_root_stored_with_the_split(tmp_path):
    """split.json keeps the dataset's root: the same images under a new root are the run's images, so the check
    still compares (and still catches leaked training images) after the folder moved."""
    _images(tmp_path / "data" / "good", [f"{i:03d}" for i in range(12)])
    data = _open(tmp_path / "data")
    write_split(tmp_path, data, *split_validation(data.train, 0.2, 0))
    assert json.loads((tmp_path / SPLIT_FILE).read_text())["root"] == str(tmp_path / "data")
    (tmp_path / "data").rename(tmp_path / "moved")
    assert check_split(tmp_path, _open(tmp_path / "moved")) == []
    _images(tmp_path / "moved" / "good", [f"{i:03d}" for i in range(12, 16)])
    with pytest.raises(DataError, match="were training images of this run"):
        check_split(tmp_path, _open(tmp_path / "moved"))
    # a split stored without the root (runs before apps 0.9.0) cannot follow: one note, no check
    split = json.loads((tmp_path / SPLIT_FILE).read_text())
    del split["root"]
    (tmp_path / SPLIT_FILE).write_text(json.dumps(split))
    notes = check_split(tmp_path, _open(tmp_path / "moved"))
    assert len(notes) == 1 and "none of the test images is where it was" in notes[0]


def test_a_resume_notes_training_images_that_changed(tmp_path):
    from apps.common.split import check_resumed_split
    from ssmad.datasets import open_dataset

    def opened():
        return open_dataset(f"folder:{tmp_path / 'data'}", normal="good", test_normal="test", image_size=32)

    _images(tmp_path / "data" / "good", [f"{i:03d}" for i in range(10)])
    _images(tmp_path / "data" / "test", ["t0", "t1"])
    data = opened()
    write_split(tmp_path, data, *split_validation(data.train, 0.2, 0))
    assert check_resumed_split(tmp_path, opened(), *split_validation(opened().train, 0.2, 0)) == []
    _images(tmp_path / "data" / "good", ["010", "011"])
    data = opened()
    notes = check_resumed_split(tmp_path, data, *split_validation(data.train, 0.2, 0))
    assert notes and all("differ from those the run started with" in n for n in notes)
    assert "train images differ" in notes[0]
