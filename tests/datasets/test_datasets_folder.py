"""The ``folder`` dataset: splits, mask matching (folder, beside, none) and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from ssmad_dataset_fixtures import box_mask, rgb, save, save_variant

from ssmad.core import ConfigError, DataError, MissingParameterError, build
from ssmad.datasets import FolderConfig, build_folder


def _normal(root: Path, n: int = 10, name: str = "good") -> Path:
    kinds = ["rgb", "gray", "rgba", "palette", "gray16"]
    for i in range(n):
        save_variant(root / name / f"n{i:02d}.png", i, kinds[i % len(kinds)])
    return root / name


def _abnormal(root: Path, masks: str | None) -> None:
    """bad/scratch/a0.png, bad/scratch/a1.png, bad/dent/a0.png (same stem in two folders) + masks."""
    for sub, stems in (("scratch", ["a0", "a1"]), ("dent", ["a0"])):
        for j, stem in enumerate(stems):
            save(root / "bad" / sub / f"{stem}.png", rgb(50 + j))
            if masks == "folder":
                save(root / "gt" / sub / f"{stem}_mask.png", box_mask())
            elif masks == "beside":
                save(root / "bad" / sub / f"{stem}_mask.png", box_mask())


def test_split_and_masks_in_folder(tmp_path):
    _normal(tmp_path)
    _abnormal(tmp_path, "folder")
    ds = build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad", masks="gt", image_size=16,
                                   category="widget"))
    assert ds.name == "folder" and ds.categories == [] and ds.category == "widget" and ds.has_masks
    assert len(ds.train) == 8 and ds.test.labels == [0, 0, 1, 1, 1]
    assert sorted(ds.test.defect_types) == ["dent", "good", "good", "scratch", "scratch"]
    for e in ds.test.entries:  # same stem in two defect folders: matched by relative path
        if e.label:
            assert Path(e.mask_path).parent.name == Path(e.path).parent.name
    for s in list(ds.test) + list(ds.train):
        assert s.image.shape == (3, 16, 16) and s.category == "widget"
        assert (float(s.mask.sum()) > 0) == bool(s.label)
    again = build_folder(FolderConfig(root=str(tmp_path), normal="good", seed=0))
    assert again.train.paths == ds.train.paths  # deterministic
    other = build_folder(FolderConfig(root=str(tmp_path), normal="good", seed=3))
    assert set(other.train.paths) != set(ds.train.paths)
    quarter = build_folder(FolderConfig(root=str(tmp_path), normal="good", test_fraction=0.3))
    assert len(quarter.test) == 3 and not quarter.has_masks


def test_masks_beside_images(tmp_path):
    _normal(tmp_path, 5)
    _abnormal(tmp_path, "beside")
    ds = build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad"))
    assert ds.has_masks and len(ds.test) == 1 + 3  # the *_mask files are not images
    assert all(e.mask_path.endswith("_mask.png") for e in ds.test.entries if e.label)


def test_image_level_only(tmp_path):
    _normal(tmp_path, 5)
    _abnormal(tmp_path, None)
    ds = build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad"))
    assert not ds.has_masks and ds.test.labels.count(1) == 3
    s = ds.test[len(ds.test) - 1]
    assert s.label == 1 and float(s.mask.sum()) == 0.0


def test_explicit_test_normal_and_several_folders(tmp_path):
    _normal(tmp_path, 4, "good_a")
    _normal(tmp_path, 3, "good_b")
    _normal(tmp_path / "t", 2, "ok")
    ds = build_folder(FolderConfig(normal=(str(tmp_path / "good_a"), str(tmp_path / "good_b")),
                                   test_normal=str(tmp_path / "t" / "ok")))
    assert len(ds.train) == 7 and len(ds.test) == 2 and ds.root is None
    with pytest.raises(DataError, match="both training and test"):
        build_folder(FolderConfig(root=str(tmp_path), normal="good_a", test_normal="good_a"))


def test_folder_errors(tmp_path):
    _normal(tmp_path, 5)
    _abnormal(tmp_path, "folder")
    (tmp_path / "gt" / "dent" / "a0_mask.png").unlink()
    with pytest.raises(DataError, match="missing mask.*a0.png"):
        build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad", masks="gt"))
    for p in (tmp_path / "bad").rglob("*.png"):
        save(p.with_name(p.stem + "_mask.png"), box_mask()) if p.stem == "a1" else None
    with pytest.raises(DataError, match="missing mask"):  # some beside masks present, others not
        build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad"))
    with pytest.raises(DataError, match="nowhere"):
        build_folder(FolderConfig(root=str(tmp_path), normal="nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        build_folder(FolderConfig(root=str(tmp_path), normal="empty"))
    with pytest.raises(DataError, match="no_root"):
        build_folder(FolderConfig(root=str(tmp_path / "no_root"), normal="good"))


def test_folder_config_through_registry(tmp_path):
    _normal(tmp_path, 5)
    ds = build("dataset", "folder", root=str(tmp_path), normal=["good"], test_fraction=0.4)
    assert len(ds.train) == 3 and len(ds.test) == 2
    with pytest.raises(ConfigError, match="test_fraction"):
        build("dataset", "folder", root=str(tmp_path), normal="good", test_fraction=1.0)
    with pytest.raises(MissingParameterError, match="dataset 'folder': missing required parameter 'normal'$") as exc:
        build("dataset", "folder", root=str(tmp_path))
    assert exc.value.names == ("normal",) and isinstance(exc.value, ConfigError)
