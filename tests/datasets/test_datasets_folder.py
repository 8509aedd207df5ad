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
    with pytest.raises(DataError, match=r"n00\.png is listed as both training \(normal folder .*good_a\) and "
                                        r"test-normal \(test_normal folder .*good_a\)"):
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


# ---- one role per image ------------------------------------------------------------------------------------

def _mvtec_like(root: Path) -> Path:
    """train/good (4), test/good (2), test/crack (2) and ground_truth/crack/<stem>_mask.png."""
    for i in range(4):
        save(root / "train" / "good" / f"{i:03d}.png", rgb(i))
    for i in range(2):
        save(root / "test" / "good" / f"{i:03d}.png", rgb(10 + i))
        save(root / "test" / "crack" / f"{i:03d}.png", rgb(20 + i))
        save(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", box_mask())
    return root


def test_mvtec_like_tree_test_good_is_test_normal_only(tmp_path):
    """abnormal=test holds test/good, given as test_normal: those images are test-normal, not anomalies."""
    _mvtec_like(tmp_path)
    ds = build_folder(FolderConfig(root=str(tmp_path), normal="train/good", test_normal="test/good",
                                   abnormal="test"))
    assert len(ds.train) == 4 and ds.test.labels == [0, 0, 1, 1] and not ds.has_masks
    assert ds.test.defect_types == ["good", "good", "crack", "crack"]
    assert [Path(p).parent.name for p in ds.test.paths] == ["good", "good", "crack", "crack"]
    ds = build_folder(FolderConfig(root=str(tmp_path), normal="train/good", test_normal="test/good",
                                   abnormal="test", masks="ground_truth"))
    assert ds.has_masks and ds.test.labels == [0, 0, 1, 1]
    assert [Path(e.mask_path).name for e in ds.test.entries if e.label] == ["000_mask.png", "001_mask.png"]
    assert [float(s.mask.sum()) > 0 for s in ds.test] == [False, False, True, True]


def test_masks_folder_inside_the_abnormal_folder_is_left_out(tmp_path):
    _normal(tmp_path, 5)
    for i in range(2):
        save(tmp_path / "bad" / f"a{i}.png", rgb(60 + i))
        save(tmp_path / "bad" / "gt" / f"a{i}.png", box_mask())  # masks inside bad/, no _mask suffix
    ds = build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad", masks="bad/gt"))
    assert ds.test.labels.count(1) == 2 and ds.has_masks
    assert all("gt" not in Path(e.path).parts for e in ds.test.entries)
    (tmp_path / "only").mkdir()
    save(tmp_path / "only" / "gt" / "a0.png", box_mask())
    with pytest.raises(DataError, match="no images in folder anomalous image folder .*only outside the folders"):
        build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="only", masks="only/gt"))


def test_an_image_in_two_roles_is_an_error(tmp_path):
    _normal(tmp_path, 5)
    _abnormal(tmp_path, "folder")
    with pytest.raises(DataError, match=r"good/n0\d\.png is listed as both training \(normal folder .*good\) "
                                        r"and anomalous \(abnormal folder .*good\); an image can have one role"):
        build_folder(FolderConfig(root=str(tmp_path), normal="good", test_normal="bad", abnormal="good"))
    with pytest.raises(DataError, match=r"bad/dent/a0\.png is listed as both training .* and anomalous"):
        build_folder(FolderConfig(root=str(tmp_path), normal=".", abnormal="bad", masks="gt"))  # bad/ in .
    with pytest.raises(DataError, match=r"scratch/a0\.png is listed twice as anomalous"):
        build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal=("bad", "bad/scratch"), masks="gt"))
    save(tmp_path / "tn" / "scratch" / "a1.png", box_mask())  # a test-normal image, and a mask by its name
    with pytest.raises(DataError, match=r"tn/scratch/a1\.png is listed as both test-normal .* and mask "
                                        r"\(the mask of .*bad/scratch/a1\.png\)"):
        build_folder(FolderConfig(root=str(tmp_path), normal="good", test_normal="tn", abnormal="bad", masks="tn"))
    ok = build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad", masks="gt"))
    assert ok.test.labels.count(1) == 3


def test_masks_beside_in_any_case(tmp_path):
    """``000_MASK.png`` beside ``000.png``: left out of the images (as before) and now found as its mask."""
    _normal(tmp_path, 5)
    save(tmp_path / "bad" / "000.png", rgb(70))
    save(tmp_path / "bad" / "000_MASK.png", box_mask())
    save(tmp_path / "bad" / "001.png", rgb(71))
    save(tmp_path / "bad" / "001_Mask.PNG", box_mask())
    save(tmp_path / "bad" / "002.png", rgb(72))
    save(tmp_path / "bad" / "002_MASK.png", box_mask(box=(0, 0, 2, 2)))
    save(tmp_path / "bad" / "002_mask.png", box_mask())  # where names differ only in case: the exact spelling
    ds = build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad"))
    masks = {Path(e.path).name: Path(e.mask_path).name for e in ds.test.entries if e.label}
    if (tmp_path / "bad" / "002_mask.png").samefile(tmp_path / "bad" / "002_MASK.png"):  # case-insensitive disk
        masks.pop("002.png")
        assert len(masks) == 2
    else:
        assert masks.pop("002.png") == "002_mask.png"
    assert masks == {"000.png": "000_MASK.png", "001.png": "001_Mask.PNG"} and ds.has_masks


def test_mask_folder_matched_ignoring_case(tmp_path):
    _normal(tmp_path, 5)
    save(tmp_path / "bad" / "Scratch" / "IMG_01.png", rgb(80))
    save(tmp_path / "gt" / "scratch" / "img_01_MASK.png", box_mask())  # by relative path
    save(tmp_path / "bad" / "Scratch" / "img_02.png", rgb(81))
    save(tmp_path / "gt" / "IMG_02_mask.png", box_mask())  # by stem
    ds = build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad", masks="gt"))
    found = {Path(e.path).name: Path(e.mask_path).name for e in ds.test.entries if e.label}
    assert found == {"IMG_01.png": "img_01_MASK.png", "img_02.png": "IMG_02_mask.png"}
    save(tmp_path / "bad" / "Dent" / "IMG_02.png", rgb(82))  # its exact stem takes the mask; img_02 is ambiguous
    with pytest.raises(DataError, match=r"missing mask for anomalous image .*Scratch/img_02\.png"):
        build_folder(FolderConfig(root=str(tmp_path), normal="good", abnormal="bad", masks="gt"))
