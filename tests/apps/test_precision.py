"""train.precision: mixed precision of the networks, with losses and statistics in fp32."""

from __future__ import annotations

import json

import pytest
import torch

from apps.almrr import APP as ALMRR_APP
from apps.vmpfd import APP as VMPFD_APP
from ssmad.core import ConfigError
from ssmad.core.device import autocast, native_bf16_cpu, resolve_precision

CPU = torch.device("cpu")


def test_auto_is_bf16_only_where_the_cpu_has_native_units():
    assert native_bf16_cpu("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert native_bf16_cpu("flags : sse avx512_bf16\n")
    assert not native_bf16_cpu("flags : sse avx2 avx512f avx512bw\n")    # bf16 by conversion: slower than fp32
    assert not native_bf16_cpu("")
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16_cpu() else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError, match='train.precision = "fp16" needs a CUDA device'):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="train.precision: expected one of"):
        resolve_precision("fp8", CPU)


def test_autocast_runs_matrix_products_in_bf16_and_fp32_is_untouched():
    a = torch.rand(8, 8)
    with autocast(CPU, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (a @ a).dtype == torch.float32


def _train(run_app, app, tmp_path, precision: str):
    run = tmp_path / precision
    code, out, err = run_app(app, "train", "--preset", "smoke", "--epochs", "2", "--set",
                             f'train.precision="{precision}"', "--out", str(run), "--device", "cpu")
    assert code == 0, err
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return run, out, history


@pytest.mark.parametrize("app", [ALMRR_APP, VMPFD_APP], ids=["almrr", "vmpfd"])
def test_bf16_matches_fp32_within_tolerance(app, tmp_path, run_app):
    """Training: the same seed in fp32 and bf16 logs every loss within 3% (bf16 keeps 8 bits of mantissa; the
    losses are computed in fp32 from the networks' outputs). Scoring: the fp32 model's maps and scores in bf16 are
    within 5% (relative L2) of its fp32 ones. A loss, distance or statistic computed in bf16 would miss both by far
    more. (The smoke models are too small and too briefly trained for their test metrics to compare: a few
    images reorder at the slightest change.)"""
    from apps.common.data import open_data

    run32, out32, h32 = _train(run_app, app, tmp_path, "fp32")
    _, out16, h16 = _train(run_app, app, tmp_path, "bf16")
    assert "precision fp32" in out32 and "precision bf16" in out16
    for a, b in zip(h32, h16, strict=True):
        for key in a:
            if key not in ("epoch", "seconds"):
                assert b[key] == pytest.approx(a[key], rel=0.03, abs=1e-3), (key, a, b)
    method, _ = app.load_method(run32, CPU)
    method.train(False)
    images = torch.stack([s.image for s in list(open_data(method.config).test)[:6]])
    with torch.no_grad():
        full = method.predict(images)
        method.precision = "bf16"
        half = method.predict(images)
    assert not torch.equal(full.anomaly_map, half.anomaly_map)      # the networks did run in bf16
    for a, b in [(full.anomaly_map, half.anomaly_map), (full.score, half.score),
                 *[(full.extras[k], half.extras[k]) for k in full.extras]]:
        assert a.dtype == b.dtype == torch.float32
        assert float((a - b).norm() / a.norm().clamp_min(1e-12)) < 0.05

def test_fp16_on_a_cpu_is_one_error_naming_the_key(tmp_path, run_app):
    code, _, err = run_app(ALMRR_APP, "train", "--preset", "smoke", "--set", 'train.precision="fp16"',
                           "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 2 and err.strip().splitlines() == [
        'error: train.precision = "fp16" needs a CUDA device; on a CPU use "bf16" or "fp32"']
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("app", [ALMRR_APP, VMPFD_APP], ids=["almrr", "vmpfd"])
def test_channels_last_and_the_feature_cache_change_only_rounding(app, tmp_path, run_app):
    """The same seed in fp32 with the defaults (channels-last; ALMRR's feature cache) and with the path runs took
    before them (contiguous, no cache) logs every loss within 0.1%: the layouts and the cache reorder no more than
    the convolutions' own sums."""
    before = ['train.memory_format="contiguous"'] + (["method.feature_cache_mb=0"] if app is ALMRR_APP else [])
    logs = []
    for name, sets in (("before", before), ("defaults", [])):
        args = [a for s in ['train.precision="fp32"', *sets] for a in ("--set", s)]
        run = tmp_path / name
        code, _, err = run_app(app, "train", "--preset", "smoke", "--epochs", "2", *args, "--out", str(run),
                               "--device", "cpu")
        assert code == 0, err
        logs.append([json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()])
    for a, b in zip(*logs, strict=True):
        for key in a:
            if key not in ("epoch", "seconds"):
                assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), (key, a, b)


def test_a_bad_memory_format_is_one_error_naming_the_key(tmp_path, run_app):
    code, _, err = run_app(ALMRR_APP, "train", "--preset", "smoke", "--set", 'train.memory_format="nhwc"',
                           "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 2 and "train.memory_format" in err and "'channels_last'" in err, err
    assert not (tmp_path / "run").exists()
