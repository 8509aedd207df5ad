"""apps.vmpfd end to end on the smoke preset: PDN distillation, training, fused + branch reports, predict."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from apps.vmpfd.__main__ import APP


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, run_app):
    run = tmp_path_factory.mktemp("vmpfd") / "run"
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--out", str(run), "--device", "cpu")
    assert code == 0, err
    return run, out


def test_train_distils_pdn_and_reports_each_branch(smoke_run):
    run, out = smoke_run
    assert (run / "pdn.pt").is_file() and (run / "model.pt").is_file()
    metrics = json.dumps(json.loads((run / "report" / "branches" / "metrics.json").read_text()))
    assert "local only" in metrics and "global only" in metrics
    assert "nll" in out and "ssim" in out


def test_checkpoint_carries_normalisation_and_reloads(smoke_run):
    run, _ = smoke_run
    method, ckpt = APP.load_method(run, torch.device("cpu"))
    extra = ckpt["state"]["extra"]
    assert set(extra) == {"norm_local", "norm_global"}
    images = torch.rand(2, 3, 64, 64)
    out = method.predict(images)
    assert out.anomaly_map.shape == (2, 1, 64, 64) and out.score.shape == (2,)
    # fused map = weighted sum of the normalised branch maps
    expect = 0.5 * out.extras["local"] + 0.5 * out.extras["global"]
    assert torch.allclose(out.anomaly_map, expect, atol=1e-6)


def test_predict_and_components(smoke_run, tmp_path, run_app):
    run, _ = smoke_run
    import numpy as np
    from PIL import Image

    from ssmad.datasets import open_dataset

    demo = open_dataset("demo", image_size=64, n_train=12, n_test_normal=4, n_test_anomalous=6)
    files = []
    for i in (0, len(demo.test) - 1):
        f = tmp_path / f"img{i}.png"
        Image.fromarray((demo.test[i].image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(f)
        files.append(f)
    code, out, err = run_app(APP, "components")
    assert code == 0 and "vim_ae" in out and "cnn_ae" in out
    code, out, err = run_app(APP, "predict", "--run", str(run), *map(str, files), "--out", str(tmp_path / "p"),
                             "--save-maps")
    assert code == 0, err
    assert len(list(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))) == 2
    maps = {p.name: np.load(p) for p in (tmp_path / "p" / "maps").glob(f"{files[0].stem}*.npy")}
    assert sorted(maps) == [f"{files[0].stem}.{s}" for s in ("global.npy", "local.npy", "npy")]
    assert all(m.shape == (64, 64) for m in maps.values())


def test_ablation_switches_build(tmp_path, run_app):
    from apps.common.config import load_config
    from apps.vmpfd.method import VMPFD

    cfg = load_config(APP.app_dir, "smoke", None, ["pipeline.autoencoder.name=cnn_ae", 'method.local_features="pdn"'])
    m = VMPFD(cfg, torch.device("cpu"))
    assert type(m.modules["autoencoder"]).__name__ != "" and "latent_norm" not in m.modules
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--set", 'method.local_features="both"', "--out",
                           str(tmp_path / "r"))
    assert code == 2 and "method.local_features" in err


def test_branch_diagnostic_script(smoke_run, tmp_path, capsys, load_script):
    """scripts/vmpfd_branches.py (the docs/results-mt.md branch figures) runs on a finished run and refuses others."""
    import re

    script = load_script("vmpfd_branches")
    run, _ = smoke_run
    assert script.main([str(run)]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(local|global), (.+?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%$", out, re.M)
    # the smoke run holds out one normal image: enough for the mean, not for a z-score
    assert [(r[0], r[1].strip()) for r in rows] == [
        (b, v) for b in ("local", "global") for v in ("as used (quantile normalised)", "position_norm subtract")]
    assert out.count("position_norm zscore: not computed (position_norm.fit: mode 'zscore' needs at least 2") == 2
    for name in ("per-position Gaussian", "one Gaussian for all positions", "nearest training feature"):
        assert re.search(rf"^PDN features, {name}(\s+[\d.]+){{4}}\s+[\d.]+%$", out, re.M), out
    assert all(0 <= float(x) <= 100 for r in rows for x in r[2:])
    assert script.main([str(tmp_path)]) == 2
    assert "model.pt not found" in capsys.readouterr().err
