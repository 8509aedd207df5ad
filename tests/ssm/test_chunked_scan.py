"""The ``chunked`` selective scan (the export-friendly one) against the ``reference`` oracle: outputs, last state and
all eight gradients, over shapes where L is and is not a multiple of the chunk; its result does not depend on the
chunk length; large Δ·A (which would overflow a one-pass cumulative sum) stays finite."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import build
from ssmad.ssm.bench import make_inputs
from ssmad.ssm.chunked import selective_scan_chunked
from ssmad.ssm.scan import selective_scan_reference

TOL = {"rtol": 6e-4, "atol": 2e-3}   # mamba_ssm's tolerances


@pytest.mark.parametrize(("b", "d", "length", "n", "chunk"), [(2, 3, 1, 4, 16), (1, 4, 37, 16, 16), (2, 5, 64, 4, 8),
                                                               (1, 2, 20, 1, 7)])
def test_matches_the_reference_with_gradients(b, d, length, n, chunk):
    ins = make_inputs(b, d, length, n, grad=True, seed=length)
    ref, ref_last = selective_scan_reference(**ins, delta_softplus=True, return_last_state=True)
    (ref.square().sum() + ref_last.sum()).backward()
    ref_grads = {k: v.grad.clone() for k, v in ins.items()}
    for v in ins.values():
        v.grad = None
    out, last = selective_scan_chunked(**ins, delta_softplus=True, return_last_state=True, chunk=chunk)
    (out.square().sum() + last.sum()).backward()
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(last, ref_last, **TOL)
    assert last.dtype == torch.float32 and out.dtype == ins["u"].dtype
    for k, v in ins.items():
        torch.testing.assert_close(v.grad, ref_grads[k], **TOL, msg=lambda m, k=k: f"grad {k}: {m}")


@settings(max_examples=20, deadline=None)
@given(length=st.integers(1, 40), chunk=st.integers(1, 24), seed=st.integers(0, 10_000))
def test_the_result_does_not_depend_on_the_chunk(length, chunk, seed):
    ins = make_inputs(1, 3, length, 4, grad=False, seed=seed)
    whole = selective_scan_chunked(**ins, delta_softplus=True, chunk=length)
    torch.testing.assert_close(selective_scan_chunked(**ins, delta_softplus=True, chunk=chunk), whole,
                               rtol=1e-5, atol=1e-5)


def test_strong_decay_stays_finite():
    ins = make_inputs(1, 2, 48, 16, grad=False)
    ins["delta_bias"] = torch.full((2,), 4.0)        # softplus(Δ) ≈ 4, Δ·A down to -64 a step
    out = selective_scan_chunked(**ins, delta_softplus=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, selective_scan_reference(**ins, delta_softplus=True), **TOL)


def test_registered_and_optional_parts():
    fn = build("scan", "chunked")
    ins = make_inputs(1, 2, 9, 3, grad=False)
    torch.testing.assert_close(fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"]),
                               selective_scan_reference(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"]), **TOL)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        fn(**ins, chunk=0)
