"""GroupedAP and the paired bootstrap that train.select = "best" decides with."""

from __future__ import annotations

import numpy as np
import pytest

from ssmad.core import DataError
from ssmad.scoring import GroupedAP, bootstrap_difference, evaluate


def _data(seed: int = 0, groups: int = 12, pixels: int = 50):
    rng = np.random.default_rng(seed)
    labels = rng.random((groups, pixels)) < 0.2
    scores = rng.random((groups, pixels)) + 0.5 * labels          # distinct scores: no ties
    return scores, labels, np.repeat(np.arange(groups), pixels).reshape(groups, pixels)


def test_plain_ap_is_pixel_ap_and_weights_repeat_groups():
    scores, labels, groups = _data()
    g = GroupedAP(scores, labels, groups)
    assert g.ap() == pytest.approx(float(evaluate(None, None, labels[:, None], scores[:, None], ["pixel_ap"])
                                         ["pixel_ap"]))
    # weight 2 on group 3, 0 on group 5: the AP of the pixels with group 3 twice and group 5 dropped
    keep = [i for i in range(12) if i != 5] + [3]
    w = np.ones(12)
    w[3], w[5] = 2, 0
    ref = float(evaluate(None, None, labels[keep][:, None], scores[keep][:, None], ["pixel_ap"])["pixel_ap"])
    assert g.ap(w) == pytest.approx(ref)


def test_paired_bootstrap_tells_noise_from_a_lead():
    scores, labels, groups = _data()
    same = GroupedAP(scores, labels, groups)
    gap, se = bootstrap_difference(same, GroupedAP(scores.copy(), labels, groups))
    assert gap == 0 and se == 0
    noisy = GroupedAP(scores + np.random.default_rng(1).normal(0, 0.05, scores.shape), labels, groups)
    gap, se = bootstrap_difference(noisy, same)
    assert abs(gap) < 2 * se                                       # a little noise is no lead
    better = GroupedAP(scores + 0.5 * labels, labels, groups)
    gap, se = bootstrap_difference(better, same)
    assert gap > 2 * se > 0
    one = GroupedAP(scores[:1], labels[:1], groups[:1])
    assert bootstrap_difference(one, one)[1] == float("inf")       # one image: the error is unknown
    with pytest.raises(DataError, match="same groups"):
        bootstrap_difference(one, same)
    with pytest.raises(DataError, match="differ in size"):
        GroupedAP(scores, labels[:2], groups)
