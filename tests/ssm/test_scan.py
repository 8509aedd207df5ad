"""Selective-scan backends: agreement with the reference loop, gradients, causality, long-sequence stability."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmad.core import build
from ssmad.ssm import (
    AutoScan,
    cpu_kernel_available,
    cpu_kernel_status,
    mamba_ssm_available,
    selective_scan_cpu,
    selective_scan_reference,
    selective_scan_torch,
)

RTOL, ATOL = 6e-4, 2e-3            # the tolerances mamba_ssm uses between its kernel and its reference (fp32)
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# the fast backends held to the reference: pure PyTorch, and the compiled CPU kernel where it builds
needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason=f"CPU scan kernel {cpu_kernel_status()}")
FAST = pytest.mark.parametrize("fast", [pytest.param(selective_scan_torch, id="torch"),
                                        pytest.param(selective_scan_cpu, id="cpu", marks=needs_kernel)])


def make_inputs(b: int, d: int, length: int, n: int, *, seed: int, with_d: bool, with_z: bool, with_bias: bool,
                dtype=torch.float32, device: str = "cpu") -> dict[str, torch.Tensor | None]:
    """Inputs distributed as in mamba_ssm's own test of selective_scan_fn."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, kind="normal"):
        x = torch.randn(*shape, generator=g) if kind == "normal" else torch.rand(*shape, generator=g)
        return x.to(dtype=dtype, device=device).requires_grad_()

    return {
        "u": rnd(b, d, length), "delta": (0.5 * rnd(b, d, length, kind="uniform")).detach().requires_grad_(),
        "A": (-0.5 * rnd(d, n, kind="uniform")).detach().requires_grad_(),
        "B": rnd(b, n, length), "C": rnd(b, n, length),
        "D": rnd(d) if with_d else None, "z": rnd(b, d, length) if with_z else None,
        "delta_bias": (0.5 * rnd(d, kind="uniform")).detach().requires_grad_() if with_bias else None,
    }


def run(fn, inputs, softplus: bool, gout: torch.Tensor | None = None):
    out = fn(**inputs, delta_softplus=softplus)
    gout = torch.randn_like(out) if gout is None else gout
    present = [k for k in NAMES if inputs[k] is not None]
    grads = torch.autograd.grad(out, [inputs[k] for k in present], gout)
    return out, dict(zip(present, grads)), gout


def assert_agree(fn, inputs, softplus: bool) -> None:
    ref_out, ref_grads, gout = run(selective_scan_reference, inputs, softplus)
    out, grads, _ = run(fn, inputs, softplus, gout)
    torch.testing.assert_close(out, ref_out, rtol=RTOL, atol=ATOL)
    assert set(grads) == set(ref_grads)
    for k, g in grads.items():
        torch.testing.assert_close(g, ref_grads[k], rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"grad {k}: {m}")


case = st.fixed_dictionaries({
    "b": st.integers(1, 2), "d": st.integers(1, 5),
    "length": st.one_of(st.just(1), st.integers(2, 40).map(lambda x: 2 * x + 1), st.integers(2, 80)),
    "n": st.sampled_from([1, 4, 16]), "seed": st.integers(0, 2**31 - 1),
    "with_d": st.booleans(), "with_z": st.booleans(), "with_bias": st.booleans(),
})


@FAST
@settings(max_examples=30, deadline=None)
@given(case=case, softplus=st.booleans())
def test_fast_backends_match_reference(fast, case, softplus):
    assert_agree(fast, make_inputs(**case), softplus)


@pytest.mark.skipif(not (mamba_ssm_available() and torch.cuda.is_available()), reason="needs mamba_ssm and CUDA")
@settings(max_examples=20, deadline=None)
@given(case=case, softplus=st.booleans())
def test_mamba_ssm_backend_matches_reference(case, softplus):
    from ssmad.ssm import selective_scan_mamba

    assert_agree(selective_scan_mamba, make_inputs(**case, device="cuda"), softplus)


@settings(max_examples=10, deadline=None)
@given(length=st.integers(5, 90), budget=st.integers(1, 200), seed=st.integers(0, 2**31 - 1))
def test_torch_backend_block_size_does_not_matter(length, budget, seed):
    """Time runs in blocks (one step each, a ragged last block, one block for all L): the same outputs and grads."""
    import ssmad.ssm.scan as scan_module

    inputs = make_inputs(2, 3, length, 4, seed=seed, with_d=True, with_z=True, with_bias=True)
    saved = scan_module._BLOCK_ELEMENTS, scan_module._BLOCK_ELEMENTS_NO_GRAD
    scan_module._BLOCK_ELEMENTS = scan_module._BLOCK_ELEMENTS_NO_GRAD = budget
    try:
        assert_agree(selective_scan_torch, inputs, True)
        with torch.no_grad():                                   # the forward-only path has its own blocks
            torch.testing.assert_close(selective_scan_torch(**inputs, delta_softplus=True),
                                       selective_scan_reference(**inputs, delta_softplus=True), rtol=RTOL, atol=ATOL)
    finally:
        scan_module._BLOCK_ELEMENTS, scan_module._BLOCK_ELEMENTS_NO_GRAD = saved


@FAST
@pytest.mark.parametrize("length", [1, 5])
@pytest.mark.parametrize("grad", [False, True])
def test_fast_backends_leave_their_inputs_alone(fast, length, grad):
    """The backends work in place on their own copies only (L = 1 is where a transpose is no copy)."""
    inputs = make_inputs(1, 1, length, 4, seed=7, with_d=True, with_z=True, with_bias=True)
    before = {k: v.detach().clone() for k, v in inputs.items()}
    with torch.set_grad_enabled(grad):
        out = fast(**inputs, delta_softplus=True)
        if grad:
            out.sum().backward()
    for k, v in inputs.items():
        assert torch.equal(v.detach(), before[k]), k


@FAST
def test_fast_backends_gradcheck_float64(fast):
    """The hand-written backwards are the exact derivative (finite differences in float64), last state included."""
    inputs = make_inputs(2, 3, 11, 4, seed=3, with_d=True, with_z=True, with_bias=True, dtype=torch.float64)
    keys = [k for k in NAMES if inputs[k] is not None]

    def f(*args):
        out, last = fast(**dict(zip(keys, args)), delta_softplus=True, return_last_state=True)
        return out, last

    assert torch.autograd.gradcheck(f, tuple(inputs[k] for k in keys))


@FAST
@pytest.mark.parametrize("length", [1, 7, 16, 33, 100])
def test_last_state_matches_reference(fast, length):
    inputs = make_inputs(2, 3, length, 4, seed=length, with_d=True, with_z=False, with_bias=True)
    ref_out, ref_last = selective_scan_reference(**inputs, delta_softplus=True, return_last_state=True)
    out, last = fast(**inputs, delta_softplus=True, return_last_state=True)
    assert last.shape == (2, 3, 4)
    torch.testing.assert_close(out, ref_out, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)


@settings(max_examples=15, deadline=None)
@given(length=st.integers(2, 70), cut=st.data(), seed=st.integers(0, 2**31 - 1),
       backend=st.sampled_from(["torch", "reference"] + (["cpu"] if cpu_kernel_available() else [])))
def test_scan_is_causal(length, cut, seed, backend):
    """Changing inputs after step t leaves outputs up to t unchanged."""
    fn = build("scan", backend)
    t = cut.draw(st.integers(0, length - 2))
    inputs = {k: (v.detach() if v is not None else None)
              for k, v in make_inputs(2, 3, length, 4, seed=seed, with_d=True, with_z=True, with_bias=True).items()}
    changed = dict(inputs)
    g = torch.Generator().manual_seed(seed + 1)
    for k in ("u", "delta", "z"):
        changed[k] = inputs[k].clone()
        changed[k][..., t + 1:] = torch.rand(changed[k][..., t + 1:].shape, generator=g) * 3
    for k in ("B", "C"):
        changed[k] = inputs[k].clone()
        changed[k][..., t + 1:] = torch.randn(changed[k][..., t + 1:].shape, generator=g) * 3
    y0 = fn(**inputs, delta_softplus=True)
    y1 = fn(**changed, delta_softplus=True)
    torch.testing.assert_close(y1[..., : t + 1], y0[..., : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(y1[..., t + 1:], y0[..., t + 1:])


@FAST
def test_long_sequence_is_stable(fast):
    """L = 4096 with Δ·A down to -50 (and channels with almost no decay): finite, and equal to the reference."""
    b, d, length, n = 1, 3, 4096, 4
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, length, generator=g).requires_grad_()
    delta = torch.ones(b, d, length).requires_grad_()
    A = torch.tensor([[-50.0, -20.0, -1.0, -1e-3]]).repeat(d, 1).requires_grad_()   # Δ·A = -50 ... -0.001
    B = torch.randn(b, n, length, generator=g).requires_grad_()
    C = torch.randn(b, n, length, generator=g).requires_grad_()
    inputs = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": None, "z": None, "delta_bias": None}
    ref_out, ref_grads, gout = run(selective_scan_reference, inputs, False)
    out, grads, _ = run(fast, inputs, False, gout)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(gr).all() for gr in grads.values())
    # the slow channel accumulates ~|u|·1000: compare relative to the output scale
    torch.testing.assert_close(out, ref_out, rtol=RTOL, atol=ATOL * max(1.0, ref_out.abs().max().item() / 100))
    for k, gr in grads.items():
        scale = max(1.0, ref_grads[k].abs().max().item() / 100)
        torch.testing.assert_close(gr, ref_grads[k], rtol=RTOL, atol=ATOL * scale, msg=lambda m, k=k: f"{k}: {m}")


@FAST
def test_very_negative_decays_with_softplus(fast):
    """Softplus Δ up to ~50 with A = -16 (Δ·A ≈ -800): still finite and equal to the reference."""
    inputs = make_inputs(1, 4, 300, 16, seed=1, with_d=True, with_z=True, with_bias=False)
    with torch.no_grad():
        inputs["delta"].mul_(100)
        inputs["A"].mul_(32)
    assert_agree(fast, inputs, True)


@FAST
def test_low_precision_inputs_return_their_dtype(fast):
    inputs = make_inputs(2, 3, 20, 4, seed=0, with_d=True, with_z=True, with_bias=True)
    half = {k: (v.detach().bfloat16() if k in ("u", "delta", "z", "B", "C") and v is not None else v)
            for k, v in inputs.items()}
    out = fast(**half, delta_softplus=True)
    ref = selective_scan_reference(**half, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


@FAST
def test_no_grad_and_inference_mode(fast):
    inputs = make_inputs(2, 3, 20, 4, seed=0, with_d=True, with_z=True, with_bias=True)
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    with torch.no_grad():
        a = fast(**inputs, delta_softplus=True)
    with torch.inference_mode():
        b = fast(**inputs, delta_softplus=True)
    torch.testing.assert_close(a, expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(b, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bad, message", [
    ({"u": torch.zeros(2, 3)}, "u must be"),
    ({"delta": torch.zeros(2, 3, 6)}, "delta"),
    ({"A": torch.zeros(4, 4)}, "A must be"),
    ({"B": torch.zeros(3, 4)}, "B must be"),
    ({"C": torch.zeros(2, 4, 6)}, "C must be"),
    ({"D": torch.zeros(4)}, "D must"),
    ({"z": torch.zeros(2, 3, 4)}, "z must"),
    ({"delta_bias": torch.zeros(2)}, "delta_bias"),
])
@pytest.mark.parametrize("fn", [selective_scan_reference, selective_scan_torch, selective_scan_cpu])
def test_bad_shapes_are_reported(fn, bad, message):
    args = {"u": torch.zeros(2, 3, 5), "delta": torch.zeros(2, 3, 5), "A": torch.zeros(3, 4),
            "B": torch.zeros(2, 4, 5), "C": torch.zeros(2, 4, 5)}
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        fn(**args)


def test_registry_backends():
    assert build("scan", "torch") is selective_scan_torch
    assert build("scan", "reference") is selective_scan_reference
    auto = build("scan", "auto")
    assert isinstance(auto, AutoScan)
    inputs = make_inputs(1, 2, 9, 4, seed=0, with_d=True, with_z=False, with_bias=False)
    assert auto.backend_for(inputs["u"]) == ("cpu" if cpu_kernel_available() else "torch")
    torch.testing.assert_close(auto(**inputs), selective_scan_reference(**inputs), rtol=RTOL, atol=ATOL)
    from ssmad.core import components

    names = {c.name for c in components("scan")}
    assert {"reference", "torch", "cpu", "auto"} <= names
    assert ("mamba_ssm" in names) == mamba_ssm_available()
