"""The ``triton`` scan backend: its kernels against the reference loop, and how ``auto`` decides to use them.

They run on CPU tensors in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton is
imported); with TRITON_INTERPRET=0 on a CUDA machine, compiled on the GPU. ``scripts/gpu_checks.py`` measures speed."""

from __future__ import annotations

import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scan import ATOL, NAMES, RTOL, assert_agree, make_inputs

pytest.importorskip("triton")

from ssmad.core import components  # noqa: E402
from ssmad.ssm import AutoScan, selective_scan_reference, triton_scan  # noqa: E402
from ssmad.ssm.triton_scan import (  # noqa: E402
    selective_scan_triton,
    triton_interpreting,
    triton_status,
    triton_usable,
)

DEVICE = "cpu" if triton_interpreting() else "cuda"
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="TRITON_INTERPRET is off and there is no CUDA device")


@pytest.fixture(autouse=True)
def unchecked():
    """Every test starts with no device checked, as a new process does."""
    triton_scan._checked.clear()
    yield
    triton_scan._checked.clear()


def inputs(*args, **kwargs):
    return make_inputs(*args, **kwargs, device=DEVICE)


case = st.fixed_dictionaries({
    "b": st.integers(1, 2), "d": st.integers(1, 20),      # up to two channel blocks, the last one partly masked
    "length": st.one_of(st.just(1), st.integers(2, 24)),
    "n": st.sampled_from([1, 3, 16]), "seed": st.integers(0, 2**31 - 1),
    "with_d": st.booleans(), "with_z": st.booleans(), "with_bias": st.booleans(),
})


@settings(max_examples=12, deadline=None)
@given(case=case, softplus=st.booleans())
def test_triton_matches_reference(case, softplus):
    assert_agree(selective_scan_triton, inputs(**case), softplus)


def test_last_state_and_its_gradient():
    args = inputs(2, 5, 9, 4, seed=3, with_d=True, with_z=True, with_bias=True)
    keys = [k for k in NAMES if args[k] is not None]
    results = []
    for fn in (selective_scan_reference, selective_scan_triton):
        out, last = fn(**args, delta_softplus=True, return_last_state=True)
        grads = torch.autograd.grad(out.sum() + last.square().sum(), [args[k] for k in keys])
        results.append((out, last, *grads))
    for name, ref, got in zip(["out", "last", *keys], *results):
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")


def test_float64_inputs_are_computed_in_float32_and_returned_as_float64():
    args = inputs(1, 3, 6, 4, seed=5, with_d=True, with_z=False, with_bias=True, dtype=torch.float64)
    out = selective_scan_triton(**args, delta_softplus=True)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, selective_scan_reference(**args, delta_softplus=True), rtol=RTOL, atol=ATOL)
    assert torch.autograd.grad(out.sum(), args["A"])[0].dtype == torch.float64


def test_inputs_are_left_alone():
    args = inputs(1, 1, 5, 4, seed=7, with_d=True, with_z=True, with_bias=True)
    before = {k: v.detach().clone() for k, v in args.items()}
    selective_scan_triton(**args, delta_softplus=True).sum().backward()
    assert all(torch.equal(v.detach(), before[k]) for k, v in args.items())


def test_auto_uses_triton_for_cuda_tensors_after_its_check(monkeypatch):
    """``auto`` asks for the check once per device; a device where it fails gets a warning and ``torch``."""
    device = torch.device(DEVICE)
    cuda_like = types.SimpleNamespace(is_cuda=True, device=device)   # in the interpreter, CPU tensors stand in
    monkeypatch.setattr("ssmad.ssm.auto.mamba_ssm_available", lambda: False)
    assert triton_usable(device) and triton_status(device) == "available"
    assert AutoScan().backend_for(cuda_like) == "triton"
    if DEVICE == "cuda":
        args = inputs(1, 4, 7, 4, seed=1, with_d=True, with_z=True, with_bias=False)
        torch.testing.assert_close(AutoScan()(**args), selective_scan_reference(**args), rtol=RTOL, atol=ATOL)

    triton_scan._checked.clear()
    monkeypatch.setattr(triton_scan, "_compare", lambda args, device: (_ for _ in ()).throw(
        RuntimeError("PassManager::run failed\nmore lines")))
    with pytest.warns(RuntimeWarning, match=f"not used on {device} .*PassManager::run failed.*'torch' backend"):
        assert AutoScan().backend_for(cuda_like) == "torch"
    assert triton_status(device) == f"unavailable: they fail on {device}: RuntimeError: PassManager::run failed"
    triton_scan._checked.clear()
    monkeypatch.setattr(triton_scan, "_compare", lambda args, device: "its output differs")
    with pytest.warns(RuntimeWarning, match="its output differs"):
        assert not triton_usable(device)
    triton_scan._checked.clear()
    monkeypatch.setenv("SSMAD_TRITON", "0")
    assert triton_status(device) == "unavailable: turned off by SSMAD_TRITON=0"
    assert triton_scan._checked == {}                      # turned off: not even checked


def test_the_check_runs_under_inference_mode():
    """``backend_for`` may first be asked during inference: the check still computes its gradients."""
    with torch.inference_mode():
        assert triton_usable(DEVICE)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = make_inputs(1, 2, 3, 4, seed=0, with_d=False, with_z=False, with_bias=False)
    with pytest.raises(ValueError, match="needs CUDA tensors, got cpu"):
        selective_scan_triton(**args)
    assert triton_status("cpu") == "unavailable: runs on CUDA devices only, not cpu"


def test_registered():
    assert "triton" in {c.name for c in components("scan")}
