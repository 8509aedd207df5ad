"""Losses: focal and dice behave at the extremes, SSIM matches scikit-image and is differentiable, its Gaussian
blur equals the 2-D window's."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


@settings(max_examples=30, deadline=None)
@given(h=st.integers(6, 40), w=st.integers(6, 40), window=st.sampled_from([3, 5, 11]),
       sigma=st.floats(0.5, 3.0))
def test_gaussian_blur_is_the_reflect_padded_2d_window(h, w, window, sigma):
    """The blur by two matrix products equals the 2-D Gaussian window convolved over the reflect-padded image
    (float64, to rounding), for any size the reflection allows; its gradient is the adjoint's."""
    import torch.nn.functional as F

    from ssmad.heads.losses import _gaussian_1d, gaussian_blur

    pad = window // 2
    t = torch.randn(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h * w))
    g = _gaussian_1d(window, sigma, None, torch.float64)
    ref = F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), (g[:, None] * g[None, :]).expand(3, 1, window, window),
                   groups=3)
    torch.testing.assert_close(gaussian_blur(t, window, sigma), ref, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(ref)
    x = t.clone().requires_grad_()
    (gaussian_blur(x, window, sigma) * probe).sum().backward()
    y = t.clone().requires_grad_()
    (F.conv2d(F.pad(y, (pad,) * 4, mode="reflect"), (g[:, None] * g[None, :]).expand(3, 1, window, window),
              groups=3) * probe).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)


def test_gaussian_blur_names_an_image_too_small_for_its_window():
    from ssmad.heads.losses import gaussian_blur

    with pytest.raises(ValueError, match="a window of 11 needs images larger than 5 pixels, got 5"):
        gaussian_blur(torch.zeros(1, 1, 5, 8))
