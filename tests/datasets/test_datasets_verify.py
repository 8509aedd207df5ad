"""``AnomalyDataset.verify``: every listed file decoded and every mask's size checked before training; empty masks
of anomalous images reported once."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from ssmad_dataset_fixtures import box_mask, make_mtd, rgb, save

from ssmad.core import DataError
from ssmad.datasets import EmptyMaskWarning, FolderConfig, build_folder, open_dataset, read_size


def _folder(root: Path, n_bad: int = 3, mask=box_mask) -> Path:
    for i in range(6):
        save(root / "good" / f"n{i}.png", rgb(i))
    for i in range(n_bad):
        save(root / "bad" / f"a{i}.png", rgb(20 + i))
        save(root / "gt" / f"a{i}.png", mask())
    return root


def _build(root: Path):
    return build_folder(FolderConfig(root=str(root), normal="good", abnormal="bad", masks="gt", image_size=16))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _verify_quietly(ds, **kw) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.verify(**kw)
    return caught


def test_clean_dataset_passes_without_warnings(tmp_path):
    ds = _build(_folder(tmp_path))
    assert _verify_quietly(ds) == [] and _verify_quietly(ds, workers=3) == []
    assert _verify_quietly(_build(_folder(tmp_path / "01", mask=lambda: box_mask(value=1)))) == []  # 0/1 masks


def test_truncated_training_image_found_before_training(tmp_path):
    """A truncated file passes a header read (and the dataset build): the full decode of verify finds it."""
    _folder(tmp_path)
    _truncate(tmp_path / "good" / "n3.png")
    ds = _build(tmp_path)  # listing does not decode
    assert read_size(tmp_path / "good" / "n3.png") == (20, 28)
    for workers in (1, 4):
        with pytest.raises(DataError, match=r"^folder: cannot read image .*good/n3\.png: ") as exc:
            ds.verify(workers=workers)
        assert "\n" not in str(exc.value)


def test_truncated_jpeg_and_mask(tmp_path):
    root = make_mtd(tmp_path)
    _truncate(root / "MT_Crack" / "Imgs" / "exp1_num_2001.png")  # a mask
    ds = open_dataset(f"mtd:{root}", image_size=16)
    with pytest.raises(DataError, match=r"cannot read mask .*exp1_num_2001\.png"):
        ds.verify()
    (root / "MT_Crack" / "Imgs" / "exp1_num_2001.png").unlink()
    save(root / "MT_Crack" / "Imgs" / "exp1_num_2001.png", box_mask())
    jpg = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))[-1]
    jpg.write_bytes(jpg.read_bytes()[:300])
    with pytest.raises(DataError, match=rf"cannot read image .*{jpg.name}"):
        open_dataset(f"mtd:{root}", image_size=16).verify()


def test_mask_size_checked_by_the_loading_rule(tmp_path):
    _folder(tmp_path, mask=lambda: box_mask(10, 14))  # half size, same aspect: accepted (and resized) as on load
    assert _verify_quietly(_build(tmp_path)) == []
    save(tmp_path / "gt" / "a1.png", box_mask(20, 20))
    ds = _build(tmp_path)
    with pytest.raises(DataError, match=r"^folder: mask .*gt/a1\.png is 20×20 but its image .*bad/a1\.png is 20×28 "
                                        r"\(different aspect ratio\)$"):
        ds.verify()
    with pytest.raises(DataError, match="a1.png"):  # the same rule as loading the sample
        list(ds.test)


def test_all_problems_in_one_message(tmp_path):
    _folder(tmp_path, n_bad=5, mask=lambda: box_mask(20, 20))  # five masks of another aspect ratio
    _truncate(tmp_path / "good" / "n0.png")
    ds = _build(tmp_path)
    with pytest.raises(DataError) as exc:
        ds.verify(workers=2)
    msg = str(exc.value)
    assert msg.startswith("folder: 6 problems in the listed files: cannot read image ") and "\n" not in msg
    assert "n0.png" in msg and "gt/a0.png" in msg and "gt/a1.png" in msg and msg.endswith("(and 3 more)")


def test_empty_masks_warned_once(tmp_path):
    _folder(tmp_path, n_bad=5)
    for i in (1, 3, 4):
        save(tmp_path / "gt" / f"a{i}.png", box_mask(value=100))  # 100 of 255: empty at > 0.5
    ds = _build(tmp_path)
    with pytest.warns(EmptyMaskWarning) as caught:
        ds.verify()
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert msg == ("folder: 3 of 5 anomalous images have an empty mask (no defect pixel once read; pixel metrics "
                   "take them as defect-free): gt/a1.png, gt/a3.png, gt/a4.png")
    save(tmp_path / "gt" / "a0.png", np.zeros((20, 28), np.uint8))
    with pytest.warns(EmptyMaskWarning, match=r"^folder: 4 of 5 .*: gt/a0\.png, gt/a1\.png, gt/a3\.png, \.\.\.$"):
        _build(tmp_path).verify()


def test_in_memory_demo(tmp_path):
    assert _verify_quietly(open_dataset("demo", image_size=32)) == []


def test_summary_decodes_nothing(tmp_path):
    _folder(tmp_path)
    _truncate(tmp_path / "bad" / "a0.png")
    assert _build(tmp_path).summary()["test_anomalous"] == 3
