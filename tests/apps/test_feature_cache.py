"""The feature cache and the repeated work ALMRR's training step skips with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import default_collate

from apps.almrr import APP
from apps.common.config import load_config
from apps.common.feature_cache import FeatureCache
from ssmad.core import Sample

CPU = torch.device("cpu")


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 64), min_size=1, max_size=12), budget=st.integers(0, 2000),
       low=st.booleans())
def test_the_cache_returns_what_was_put_and_keeps_its_budget(sizes, budget, low):
    """Whatever is put comes back bit for bit in its dtype (stored in bf16 only where bf16 holds it exactly), the
    bytes held never exceed the budget, and an entry that did not fit is absent."""
    cache = FeatureCache(budget, torch.bfloat16)
    gen = torch.Generator().manual_seed(len(sizes))
    kept = {}
    for key, n in enumerate(sizes):
        t = torch.randn(n, generator=gen)
        if low:
            t = t.bfloat16().float()           # a bf16 network's output: stored in half the bytes
        if cache.put(key, [t, torch.arange(3)]):
            kept[key] = t
        assert cache.nbytes <= budget
    assert len(cache) == len(kept)
    for key in range(len(sizes)):
        got = cache.get(key)
        if key not in kept:
            assert got is None
            continue
        assert got[0].dtype == torch.float32 and torch.equal(got[0], kept[key])
        assert torch.equal(got[1], torch.arange(3))
    assert cache.hits == len(kept) and cache.misses == len(sizes) - len(kept)


def test_bf16_storage_halves_the_bytes_only_when_exact():
    exact, inexact = FeatureCache(10**6, torch.bfloat16), FeatureCache(10**6, torch.bfloat16)
    t = torch.linspace(0, 1, 1000)
    exact.put("a", [t.bfloat16().float()])
    inexact.put("a", [t + 1e-4])
    assert exact.nbytes == 2000 and inexact.nbytes == 4000
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(-1)


def _method(precision: str, sets=()):
    config = load_config(APP.app_dir, "smoke", None, [f'train.precision="{precision}"', *sets])
    return APP.method_cls(config, CPU)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_features_equal_the_backbone_on_both_halves(precision):
    """Over two epochs of draws (clean, rotated and anomalous ones), the features a step trains on equal the
    backbone run on the clean and the anomalous images as they are; the second epoch finds the unrotated clean
    images in the cache and computes only the rest."""
    method = _method(precision)
    method.train(True)
    gen = torch.Generator().manual_seed(0)
    samples = [Sample(image=torch.rand(3, 64, 64, generator=gen), mask=None, label=0, path=f"{i}.png",
                      original_size=(64, 64)) for i in range(8)]
    seen = {"as_given": 0, "same": 0}
    for epoch in range(2):
        hits = method.feature_cache.hits
        for start in range(0, 8, 4):
            items = [method.train_item(s, np.random.default_rng([epoch, start, i]))
                     for i, s in enumerate(samples[start:start + 4])]
            batch = default_collate(items)
            target, feats = method.train_features(batch)
            with torch.no_grad():
                want_t = method.model.features(batch["clean"])
                want_f = method.model.features(batch["anomalous"])
            tol = 1e-5 if precision == "fp32" else 2e-2
            torch.testing.assert_close(target, want_t, rtol=tol, atol=tol)
            torch.testing.assert_close(feats, want_f, rtol=tol, atol=tol)
            for k in seen:
                seen[k] += int(batch[k].sum())
        if epoch == 1:
            assert method.feature_cache.hits > hits
    assert 0 < seen["as_given"] < 16 and 0 < seen["same"] < 16    # every kind of draw was exercised
    if precision == "bf16":       # bf16 outputs are stored in bf16, exactly
        assert method.feature_cache.nbytes == sum(t.numel() * 2 for k in method.feature_cache._store
                                                  for t in method.feature_cache._store[k])


def test_no_cache_with_feature_cache_mb_zero():
    method = _method("fp32", ["method.feature_cache_mb=0"])
    sample = Sample(image=torch.rand(3, 64, 64), mask=None, label=0, path="a.png", original_size=(64, 64))
    for seed in range(6):
        method.train_features(default_collate([method.train_item(sample, np.random.default_rng(seed))]))
    assert len(method.feature_cache) == 0 and method.feature_cache.hits == 0
