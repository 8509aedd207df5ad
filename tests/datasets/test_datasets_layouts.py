"""MVTec AD, BTAD, VisA, MT defect and NanoTWICE readers on tiny fixtures (and MT defect on the real data)."""

from __future__ import annotations

import csv
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch
from ssmad_dataset_fixtures import H, W, box_mask, make_btad, make_mtd, make_mvtec, make_nanotwice, make_visa, save

from ssmad.core import ConfigError, DataError, Sample
from ssmad.datasets import (
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
    load_mask,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def check_records(seq, size: int, label_mask_consistent: bool = True) -> list[Sample]:
    out = []
    for s in seq:
        assert isinstance(s, Sample)
        assert s.image.shape == (3, size, size) and s.image.dtype == torch.float32
        assert float(s.image.min()) >= 0.0 and float(s.image.max()) <= 1.0
        assert s.mask.shape == (1, size, size) and s.mask.dtype == torch.float32
        assert set(torch.unique(s.mask).tolist()) <= {0.0, 1.0}
        assert s.label in (0, 1) and Path(s.path).is_file()
        if s.label == 0:
            assert float(s.mask.sum()) == 0.0 and s.defect_type == "good"
        elif label_mask_consistent:
            assert float(s.mask.sum()) > 0.0 and s.defect_type != "good"
        out.append(s)
    return out


# ---- MVTec AD ------------------------------------------------------------------------------------------------

def test_mvtec_one_category(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    ds = build_mvtec(MVTecConfig(root=str(root), category="carpet", image_size=16))
    assert ds.name == "mvtec" and ds.category == "carpet" and ds.categories == ["bottle", "carpet"]
    assert len(ds.train) == 3 and ds.train.labels == [0, 0, 0]
    assert len(ds.test) == 4 and sorted(ds.test.labels) == [0, 0, 1, 1]
    train = check_records(ds.train, 16)
    test = check_records(ds.test, 16)
    assert all(s.category == "carpet" and s.original_size == (H, W) for s in train + test)
    assert {s.defect_type for s in test} == {"good", "crack"}
    bad = next(s for s in test if s.label == 1)
    frac = float(bad.mask.mean())
    assert abs(frac - (8 * 10) / (H * W)) < 0.05  # the box survives the resize with about its area


def test_mvtec_all_categories_and_category_root(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    ds = build_mvtec(MVTecConfig(root=str(root)))
    assert ds.category is None and len(ds.train) == 6 and len(ds.test) == 8
    assert {s.category for s in ds.test} == {"bottle", "carpet"}
    single = build_mvtec(MVTecConfig(root=str(root / "bottle"), image_size=24))
    assert single.category == "bottle" and single.categories == ["bottle"] and len(single.test) == 4
    assert single.test[0].image.shape == (3, 24, 24)
    assert isinstance(single.train[0:2], type(single.train)) and len(single.train[0:2]) == 2
    assert len(pickle.loads(pickle.dumps(single.test))) == 4  # data-loader workers can get it


def test_mvtec_errors(tmp_path):
    with pytest.raises(DataError, match="missing_root"):
        build_mvtec(MVTecConfig(root=str(tmp_path / "missing_root")))
    (tmp_path / "flat").mkdir()
    save(tmp_path / "flat" / "x.png", box_mask())
    with pytest.raises(DataError, match="train/good"):
        build_mvtec(MVTecConfig(root=str(tmp_path / "flat")))
    root = make_mvtec(tmp_path / "mvtec")
    with pytest.raises(DataError, match="'botle'.*available: bottle") as exc:
        build_mvtec(MVTecConfig(root=str(root), category="botle"))
    assert "\n" not in str(exc.value)
    (root / "odd").mkdir()
    with pytest.raises(DataError, match="odd.*train/good"):
        build_mvtec(MVTecConfig(root=str(root), category="odd"))


def test_mvtec_missing_mask_empty_folder_corrupt_image(tmp_path):
    root = make_mvtec(tmp_path / "mvtec", categories=("bottle",))
    (root / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError, match="001.png"):
        build_mvtec(MVTecConfig(root=str(root)))
    shutil.rmtree(root / "bottle" / "ground_truth")
    with pytest.raises(DataError, match="ground_truth"):
        build_mvtec(MVTecConfig(root=str(root)))

    root = make_mvtec(tmp_path / "m2", categories=("bottle",))
    for p in (root / "bottle" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="train/good"):
        build_mvtec(MVTecConfig(root=str(root)))

    root = make_mvtec(tmp_path / "m3", categories=("bottle",))
    (root / "bottle" / "train" / "good" / "001.png").write_bytes(b"not a png")
    ds = build_mvtec(MVTecConfig(root=str(root)))  # listing only: pixels are read lazily
    ds.train[0]
    with pytest.raises(DataError, match="001.png"):
        ds.train[1]


# ---- BTAD ------------------------------------------------------------------------------------------------------

def test_btad_png_and_bmp_masks(tmp_path):
    root = make_btad(tmp_path / "btad")
    for cat in ("01", "03"):
        ds = build_btad(BTADConfig(root=str(root), category=cat, image_size=16))
        assert ds.categories == ["01", "03"] and len(ds.train) == 3 and len(ds.test) == 3
        test = check_records(ds.test, 16)
        assert sorted(s.defect_type for s in test) == ["good", "ko", "ko"]
        assert all(s.mask_path.endswith(".png" if cat == "01" else ".bmp")
                   for s in ds.test.entries if s.label == 1)
    assert len(build_btad(BTADConfig(root=str(root))).test) == 6
    (root / "03" / "ground_truth" / "ko" / "0001.bmp").unlink()
    with pytest.raises(DataError, match="0001.bmp"):
        build_btad(BTADConfig(root=str(root), category="03"))
    with pytest.raises(DataError, match="'2'.*available"):
        build_btad(BTADConfig(root=str(root), category="2"))


# ---- VisA --------------------------------------------------------------------------------------------------

def test_visa_csv(tmp_path):
    root = make_visa(tmp_path / "visa")
    ds = build_visa(VisAConfig(root=str(root), category="candle", image_size=16))
    assert ds.categories == ["candle", "pcb1"] and ds.category == "candle"
    assert len(ds.train) == 2 and len(ds.test) == 3 and ds.test.labels == [0, 1, 1]
    check_records(ds.test, 16)  # label-valued masks (1, 2) binarised as non-zero
    both = build_visa(VisAConfig(root=str(root)))
    assert both.category is None and len(both.train) == 4 and len(both.test) == 6
    via_csv = build_visa(VisAConfig(root=str(root / "split_csv" / "1cls.csv"), category="pcb1"))
    assert via_csv.root == str(root) and len(via_csv.test) == 3
    relative = build_visa(VisAConfig(root=str(root), split_csv="split_csv/1cls.csv", category="pcb1"))
    assert relative.test.paths == via_csv.test.paths


def _rewrite_csv(path: Path, edit) -> None:
    rows = list(csv.reader(path.open()))
    rows = edit(rows)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_visa_errors(tmp_path):
    root = make_visa(tmp_path / "visa")
    csv_path = root / "split_csv" / "1cls.csv"
    with pytest.raises(DataError, match="'candel'.*available: candle"):
        build_visa(VisAConfig(root=str(root), category="candel"))
    with pytest.raises(DataError, match="nope.csv"):
        build_visa(VisAConfig(root=str(root), split_csv="nope.csv"))
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DataError, match="missing mask.*001.JPG"):
        build_visa(VisAConfig(root=str(root), category="candle"))
    _rewrite_csv(csv_path, lambda rows: [r[:4] for r in rows])
    with pytest.raises(DataError, match="mask"):
        build_visa(VisAConfig(root=str(root)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="1cls.csv"):
        build_visa(VisAConfig(root=str(empty)))


# ---- MT defect ---------------------------------------------------------------------------------------------

def test_mtd_fixture_split(tmp_path):
    root = make_mtd(tmp_path / "mtd")
    ds = build_mtd(MTDConfig(root=str(root), image_size=16))
    assert ds.categories == [] and ds.category is None
    assert len(ds.train) == 8 and ds.test.labels.count(0) == 2 and ds.test.labels.count(1) == 5
    stems = sorted(f"exp{i}_num_{1000 + i}" for i in range(10))
    order = list(range(10))
    random.Random(0).shuffle(order)
    expected_test = {stems[i] for i in order[:2]}
    assert {Path(p).stem for p, lab in zip(ds.test.paths, ds.test.labels) if lab == 0} == expected_test
    test = check_records(ds.test, 16)
    assert {s.defect_type for s in test if s.label} == {"Crack", "Blowhole"}
    assert all(Path(p).suffix == ".jpg" for p in ds.train.paths + ds.test.paths)
    other = build_mtd(MTDConfig(root=str(root), seed=1))
    assert set(other.train.paths) != set(ds.train.paths) and len(other.train) == 8


def test_mtd_antialiased_mask(tmp_path):
    root = make_mtd(tmp_path / "mtd", n_free=5, defects=(("MT_Crack", 1),))
    ds = build_mtd(MTDConfig(root=str(root), image_size=16))
    s = ds.test[len(ds.test) - 1]
    assert s.label == 1 and s.mask.shape == (1, 16, 16) and float(s.mask.sum()) > 0
    raw = load_mask(Path(ds.test.entries[-1].mask_path))
    assert raw[3, 3] == 0 and raw[3, 4] == 1  # 127 is background, 128 is defect (> 127 of 255)


def test_mtd_errors(tmp_path):
    root = make_mtd(tmp_path / "mtd")
    with pytest.raises(ConfigError, match="category"):
        build_mtd(MTDConfig(root=str(root), category="Crack"))
    next((root / "MT_Crack" / "Imgs").glob("*.png")).unlink()
    with pytest.raises(DataError, match="missing mask.*MT_Crack"):
        build_mtd(MTDConfig(root=str(root)))
    shutil.rmtree(root / "MT_Free")
    with pytest.raises(DataError, match="MT_Free"):
        build_mtd(MTDConfig(root=str(root)))


@pytest.mark.skipif(not (SHARED / "mt-defect" / "MT_Free").is_dir(), reason="shared MT defect data not available")
def test_mtd_real_counts():
    ds = build_mtd(MTDConfig(root=str(SHARED / "mt-defect")))
    labels = ds.test.labels
    assert len(ds.train) == 572 and labels.count(0) == 142 and labels.count(1) == 257
    kinds = ds.test.defect_types
    assert kinds.count("Blowhole") == 115 and kinds.count("Break") == 85 and kinds.count("Crack") == 57
    s = ds.test[len(ds.test) - 1]  # one real defect image: grey JPEG as RGB, mask binarised
    assert s.label == 1 and s.image.shape == (3, 256, 256) and float(s.mask.sum()) > 0
    assert torch.equal(s.image[0], s.image[1])
    assert set(torch.unique(s.mask).tolist()) == {0.0, 1.0}


# ---- NanoTWICE ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gt_names", ["suffix", "unrelated"])
def test_nanotwice(tmp_path, gt_names):
    root = make_nanotwice(tmp_path / "nt", gt_names)
    ds = build_nanotwice(NanoTWICEConfig(root=str(root), image_size=16))
    assert ds.categories == [] and len(ds.train) == 4 and ds.test.labels == [0, 1, 1]
    check_records(ds.test, 16)
    check_records(ds.train, 16)
    masks = [Path(e.mask_path).name for e in ds.test.entries if e.label]
    assert masks == (["ITIA0000_gt.png", "ITIA0001_gt.png"] if gt_names == "suffix" else ["mask00.png", "mask01.png"])


def test_nanotwice_errors(tmp_path):
    root = make_nanotwice(tmp_path / "nt")
    (root / "Anomalous" / "gt" / "ITIA0001_gt.png").unlink()
    with pytest.raises(DataError, match="ITIA0001"):
        build_nanotwice(NanoTWICEConfig(root=str(root)))
    shutil.rmtree(root / "Normal")
    with pytest.raises(DataError, match="Normal"):
        build_nanotwice(NanoTWICEConfig(root=str(root)))


def test_sixteen_bit_normal_images_are_scaled(tmp_path):
    root = make_nanotwice(tmp_path / "nt")
    ds = build_nanotwice(NanoTWICEConfig(root=str(root), image_size=H))
    for s in list(ds.train) + [ds.test[0]]:
        assert 0.2 < float(s.image.mean()) < 0.8  # 16-bit files land in the same range as 8-bit ones
