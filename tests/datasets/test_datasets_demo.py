"""The offline ``demo`` dataset, ``open_dataset`` specs and the registered dataset components."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ssmad_dataset_fixtures import make_mvtec

from ssmad.core import ConfigError, DataError, build, components
from ssmad.datasets import DEFECT_KINDS, DemoConfig, build_demo, open_dataset, parse_spec
from ssmad.datasets import demo as demo_module


def test_demo_defaults():
    ds = build_demo(DemoConfig())
    assert ds.name == "demo" and ds.category == "brick" and ds.categories == ["brick", "grass", "gravel"]
    assert len(ds.train) == 60 and ds.test.labels.count(0) == 20 and ds.test.labels.count(1) == 30
    assert set(ds.test.defect_types) == {"good", *DEFECT_KINDS}
    for s in list(ds.train[:5]) + list(ds.test):
        assert s.image.shape == (3, 128, 128) and s.image.dtype == torch.float32
        assert s.mask.shape == (1, 128, 128) and set(torch.unique(s.mask).tolist()) <= {0.0, 1.0}
        assert float(s.image.min()) >= 0 and float(s.image.max()) <= 1
        assert (float(s.mask.sum()) > 0) == bool(s.label) and s.category == "brick"
        area = float(s.mask.mean())
        assert area < 0.15  # defects are local
    images = torch.stack([s.image for s in ds.train])
    assert len({hash(x.numpy().tobytes()) for x in images}) == 60  # distinct normal images


def test_demo_deterministic_and_cached():
    # build speed is measured in benchmarks/test_datasets_bench.py, not here
    demo_module._generate.cache_clear()
    a = build_demo(DemoConfig(category="gravel", seed=4))
    demo_module._generate.cache_clear()
    b = build_demo(DemoConfig(category="gravel", seed=4))
    for x, y in zip(list(a.test), list(b.test)):
        assert torch.equal(x.image, y.image) and torch.equal(x.mask, y.mask)
    c = build_demo(DemoConfig(category="gravel", seed=5))
    assert not torch.equal(a.train[0].image, c.train[0].image)
    hits = demo_module._generate.cache_info().hits
    build_demo(DemoConfig(category="gravel", seed=4))
    assert demo_module._generate.cache_info().hits == hits + 1  # cached per process
    s = a.test[0]
    s.image.zero_()
    assert float(a.test[0].image.sum()) > 0  # callers get copies


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defects_exact_visible_not_saturated(kind):
    rng = np.random.default_rng(0)
    for _ in range(6):
        img = demo_module._normal_image("grass", 96, rng)
        out, mask = demo_module.DEFECTS[kind](img, rng)
        assert mask.dtype == bool and mask.sum() >= 4
        np.testing.assert_array_equal(out[~mask], img[~mask])  # nothing changes outside the mask
        change = np.abs(out[mask] - img[mask]).mean()
        assert change > 0.05, (kind, change)  # visible
        saturated = ((out[mask] <= 0.002) | (out[mask] >= 0.998)).all(axis=-1).mean()
        assert saturated < 0.2, (kind, saturated)  # not flat black/white


def test_demo_errors_and_sizes():
    with pytest.raises(DataError, match="'bricks'.*available: brick"):
        build_demo(DemoConfig(category="bricks"))
    small = build_demo(DemoConfig(category="grass", image_size=32, n_train=3, n_test_normal=1, n_test_anomalous=4))
    assert small.test[4].image.shape == (3, 32, 32) and len(small.test) == 5
    with pytest.raises(ConfigError, match="n_train"):
        build("dataset", "demo", n_train=0)


def test_open_dataset(tmp_path):
    assert parse_spec("mvtec:/data/x:y") == ("mvtec", "/data/x:y")
    assert parse_spec("demo") == ("demo", None)
    ds = open_dataset("demo", n_train=2, n_test_normal=1, n_test_anomalous=1)
    assert ds.name == "demo" and len(ds.train) == 2
    root = make_mvtec(tmp_path / "mvtec")
    mv = open_dataset(f"mvtec:{root}", category="bottle", image_size=16)
    assert mv.category == "bottle" and mv.test[0].image.shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="'mvtek'.*available: mvtec"):
        open_dataset(f"mvtek:{root}")
    with pytest.raises(ConfigError, match="mvtec:PATH"):
        open_dataset("mvtec")
    with pytest.raises(ConfigError, match="KIND:PATH"):
        open_dataset("mvtec:")
    with pytest.raises(ConfigError, match="categroy"):
        open_dataset(f"mvtec:{root}", categroy="bottle")
    with pytest.raises(DataError, match="nothing_here"):
        open_dataset(f"mtd:{tmp_path / 'nothing_here'}")


def test_registered_components():
    names = {c.name for c in components("dataset")}
    assert {"mvtec", "btad", "visa", "mtd", "nanotwice", "folder", "demo"} <= names


def test_collate_with_dataloader():
    from torch.utils.data import DataLoader

    from ssmad.datasets import collate_samples

    ds = build_demo(DemoConfig(category="grass", image_size=32, n_train=3, n_test_normal=1, n_test_anomalous=2))
    batch = next(iter(DataLoader(ds.test, batch_size=3, collate_fn=collate_samples)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["mask"].shape == (3, 1, 32, 32)
    assert batch["label"].tolist() == [0, 1, 1] and batch["defect_type"][0] == "good"
    assert batch["original_size"] == [(32, 32)] * 3
