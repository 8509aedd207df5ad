"""apps.common: what both apps share."""

from __future__ import annotations


def test_optimizers_use_the_fused_kernel_where_the_device_has_one():
    """Adam/AdamW take the fused kernel (one pass over all parameters) where it exists, the loop where it does not,
    and the two keep the same state, so a checkpoint resumes across them."""
    import torch

    from apps.common.method import fused_if_possible

    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    opt = fused_if_possible(torch.optim.Adam, params, lr=1e-2)
    assert opt.defaults["fused"] is True
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    loop = torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2)
    loop.load_state_dict(opt.state_dict())
    assert torch.equal(loop.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])

    class NoFused(torch.optim.Adam):                       # a device without the kernel refuses fused=True
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("fused=True requires all the params to be floating point Tensors of supported "
                                   "devices")
            super().__init__(params, **kw)

    opt = fused_if_possible(NoFused, params, lr=1e-2)
    assert not opt.defaults["fused"] and opt.defaults["lr"] == 1e-2
