"""Losses: focal and dice behave at the extremes, SSIM matches scikit-image and is differentiable."""

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ssmad.heads.losses import dice_loss, focal_loss, ssim


def test_focal_and_dice_extremes():
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:5, 2:5] = 1
    perfect = torch.cat([(1 - mask) * 20 - 10, mask * 20 - 10], 1)  # logits strongly right everywhere
    wrong = -perfect
    assert focal_loss(perfect, mask) < 1e-6 < focal_loss(wrong, mask)
    prob = torch.softmax(perfect, 1)[:, 1:]
    assert dice_loss(prob, mask) < 1e-3
    assert dice_loss(torch.softmax(wrong, 1)[:, 1:], mask) > 0.9
    # focal with gamma 0 is the cross entropy
    ce = torch.nn.functional.cross_entropy(wrong * 0.1, mask[:, 0].long())
    assert torch.allclose(focal_loss(wrong * 0.1, mask, gamma=0.0), ce, atol=1e-6)


def test_ssim_agrees_with_skimage_and_has_gradient():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    x = torch.from_numpy(a)[None, None].requires_grad_(True)
    y = torch.from_numpy(b)[None, None]
    ours = ssim(x, y, data_range=1.0)
    assert abs(float(ours.detach()) - ref) < 0.03  # borders differ (reflect padding vs skimage's cropping)
    assert abs(float(ssim(y, y, data_range=1.0)) - 1.0) < 1e-5
    (1 - ours).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
