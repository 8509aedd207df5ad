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


def _train_adapter(lambda_volume: float):
    """Adapter + mixture density head on low-rank PDN-like features, the way VMPFD trains them (NLL per dimension
    minus λ·log-volume per dimension). Returns (final NLL, head, adapter, sampler)."""
    from apps.vmpfd.torch_model import Adapter
    from ssmad.heads.mdn import MixtureDensityHead

    g = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 24, generator=g)  # normal features: a 6-dim subspace of 24 channels, plus noise

    def sample(n: int) -> torch.Tensor:
        z = torch.randn(n, 4, 4, 6, generator=g) @ basis + 0.1 * torch.randn(n, 4, 4, 24, generator=g)
        return z.permute(0, 3, 1, 2)

    torch.manual_seed(0)
    adapter, head = Adapter(24, 12), MixtureDensityHead(12, n_components=2, hidden=32, bottleneck=4)
    opt = torch.optim.Adam([*adapter.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(300):
        t, log_volume = adapter.forward_with_volume(sample(16))
        nll = head.nll(t).mean()
        loss = nll - lambda_volume * log_volume / t.shape[1] if lambda_volume else nll
        opt.zero_grad()
        loss.backward()
        opt.step()
    adapter.eval()
    return float(nll.detach()), head, adapter, sample


def test_adapter_log_volume_stops_low_rank_collapse():
    """Trained by the NLL alone, the adapter G_θ collapses T to low rank: the NLL sits on the σ floor and features
    off the normal subspace are hardly told apart. With the log-volume term (method.lambda_volume) it keeps its
    rank and they are."""
    def auroc(normal: torch.Tensor, anomalous: torch.Tensor) -> float:
        return float((anomalous.flatten()[:, None] > normal.flatten()[None]).float().mean())

    results = {}
    for lam in (0.0, 1.0):
        nll, head, adapter, sample = _train_adapter(lam)
        with torch.no_grad():
            w = adapter[0].weight.flatten(1) / (adapter[1].running_var + adapter[1].eps).sqrt()[:, None]
            sv = torch.linalg.svdvals(w)
            x = sample(32)
            off = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            results[lam] = (nll - head.nll_lower_bound(), float(sv[-1] / sv[0]),
                            auroc(head.nll(adapter(x)), head.nll(adapter(off))))
    (gap0, rank0, auc0), (gap1, rank1, auc1) = results[0.0], results[1.0]
    assert gap0 < 0.1 and rank0 < 0.05  # collapsed: NLL on the floor, the map nearly rank-deficient
    assert gap1 > 1.0 and rank1 > 0.1   # with the log-volume: neither
    assert auc1 > 0.95 and auc1 > auc0 + 0.15


def test_local_feature_modes_and_old_runs():
    """sum / concat / pdn build T of the right width; a stored config of apps <= 0.2.2 ("fused", no
    lambda_volume) loads as what it trained (concatenation, no log-volume); a widening adapter is refused."""
    from apps.common.config import load_config
    from apps.vmpfd.method import VMPFD
    from ssmad.core import ConfigError

    cfg = load_config(APP.app_dir, "smoke", None, [])
    latent_dim = 16  # the smoke preset's d_model
    images = torch.rand(4, 3, 64, 64)
    for mode, width in (("sum", latent_dim), ("concat", 16 + latent_dim), ("pdn", 16)):
        cfg["method"]["local_features"] = mode
        m = VMPFD(cfg, torch.device("cpu"))
        assert m.modules["density"].in_channels == width
        m.train()
        out = m.train_step({"image": images})
        assert torch.isfinite(out["log_volume"]) and torch.isfinite(out["loss"])
        assert torch.allclose(out["loss"], out["nll"] - out["log_volume"] + 5 * out["mse"] + out["ssim"])
    old = dict(cfg, method={k: v for k, v in cfg["method"].items() if k != "lambda_volume"})
    old["method"]["local_features"] = "fused"
    m = VMPFD(old, torch.device("cpu"))
    assert m.local_features == "concat" and m.lambda_volume == 0.0
    cfg["method"].update(local_features="pdn", adapter_dim=1000)
    with pytest.raises(ConfigError, match="adapter_dim"):
        VMPFD(cfg, torch.device("cpu"))


def test_branch_diagnostic_script(smoke_run, tmp_path, capsys, load_script):
    """scripts/vmpfd_branches.py (the branch figures of docs/history/results-mt.md) runs on a finished run and
    refuses others."""
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
    ratios = re.search(r"border band / in the interior: local ([\d.]+), global ([\d.]+)$", out, re.M)
    assert ratios and all(float(x) > 0 for x in ratios.groups()), out
    assert script.main([str(tmp_path)]) == 2
    assert "model.pt not found" in capsys.readouterr().err


def test_global_error_diagnostic_script(smoke_run, tmp_path, capsys, load_script):
    """scripts/vmpfd_global_error.py (the border diagnosis of docs/results.md) runs on a finished run: the detail
    and error ratios, their correlation, and each error map's figures alone and fused; other folders are refused."""
    import re

    script = load_script("vmpfd_global_error")
    run, _ = smoke_run
    assert script.main([str(run)]) == 0
    out = capsys.readouterr().out
    ratios = re.search(r"detail σ=1 ([\d.]+), detail σ=2 ([\d.]+), detail σ=4 ([\d.]+), reconstruction error "
                       r"([\d.]+)$", out, re.M)
    assert ratios and all(float(x) > 0 for x in ratios.groups()), out
    assert re.search(r"^correlation of smoothed error and smoothed detail per normal image: mean -?[\d.]+", out, re.M)
    rows = re.findall(r"^(squared error \(the paper's\)|low-passed σ=[24], squared error|squared error / local "
                      r"detail)\s+((?:[\d.]+\s+){3})([\d.]+)\s+((?:[\d.]+\s*){3})$", out, re.M)
    assert len(rows) == 4, out
    assert all(0 <= float(x) <= 100 for r in rows for x in (r[1] + r[3]).split())
    assert script.main([str(tmp_path)]) == 2


def test_select_best_needs_a_validation_score(tmp_path, run_app):
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--set", 'train.select="best"', "--out",
                           str(tmp_path / "r"), "--no-test")
    assert code == 2 and 'train.select = "best": vmpfd has no validation score' in err, err


@pytest.mark.parametrize("override, needle", [
    ("method.gird=4", "unknown key method.gird; allowed: grid"),
    ("method.distill_lr=0", "method.distill_lr must be a number > 0"),
    ("method.distill_steps=2.5", "method.distill_steps must be an integer >= 1"),
    ("method.lambda_ssim=-1", "method.lambda_ssim must be a number >= 0"),
    ("method.pdn_input_size=8", "method.pdn_input_size must be 0 (the image size) or an integer >= 32"),
    ('method.image_score="global"', 'method.image_score must be "fused" or "local"'),
])
def test_method_keys_are_checked_before_training(override, needle):
    """A misspelt [method] key was stored and ignored; bad distillation values failed (or trained) only once
    training had begun. Both are one ConfigError now, raised while the configuration is read."""
    from apps.common.config import load_config
    from apps.vmpfd.method import VMPFD
    from ssmad.core import ConfigError

    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        VMPFD(load_config(APP.app_dir, "smoke", None, [override]), torch.device("cpu"))


def test_the_image_score_comes_from_the_map_it_names(smoke_run):
    """``method.image_score``: the maximum of the fused map (the paper's, and what older runs stored) or of the
    normalised local map; the anomaly map is the fused one either way."""
    method, _ = APP.load_method(smoke_run[0], torch.device("cpu"))
    assert method.image_score == "fused"
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fused = method.predict(images)
    assert torch.equal(fused.score, fused.anomaly_map.flatten(1).amax(1))
    method.image_score = "local"
    local = method.predict(images)
    assert torch.equal(local.anomaly_map, fused.anomaly_map)
    assert torch.equal(local.score, local.extras["local"].flatten(1).amax(1))
    assert not torch.equal(local.score, fused.score)


def test_a_frozen_backbone_descriptor_on_a_finer_grid_with_positions(tmp_path, run_app):
    """The cpu preset's local branch at smoke size: a frozen backbone as the descriptor (no distillation), its
    stages pooled to a grid finer than the encoder's (local_features = "pdn"), a density that knows the position;
    it trains, tests and reloads to the same maps."""
    config = tmp_path / "lite.toml"
    config.write_text('[method]\ngrid = 8\nlocal_features = "pdn"\n\n[[pipeline]]\nrole = "pdn"\n'
                      'name = "efficientnet_lite0"\nlayers = ["stage2", "stage3"]\nweights = "none"\n\n'
                      '[[pipeline]]\nrole = "density"\nposition = true\n')
    run = tmp_path / "run"
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--config", str(config), "--out", str(run),
                           "--device", "cpu")
    assert code == 0, err
    assert not (run / "pdn.pt").exists()   # nothing distilled: the backbone is the descriptor
    method, ckpt = APP.load_method(run, torch.device("cpu"))
    density = method.model["density"]
    assert density.position is not None and tuple(density.position.shape[-2:]) == (8, 8)
    assert "density.position" in ckpt["state"]["modules"]
    images = torch.rand(2, 3, 64, 64)
    t = method.model.pdn_features(images)
    assert t.shape == (2, 24 + 40, 8, 8)   # stage2 + stage3 of EfficientNet-Lite0, pooled to the grid
    again, _ = APP.load_method(run, torch.device("cpu"))
    assert torch.equal(method.predict(images).anomaly_map, again.predict(images).anomaly_map)


def test_descriptor_choice_script(smoke_run, capsys, load_script):
    """scripts/vmpfd_descriptor.py scores a distilled PDN file and a frozen backbone on held-out images with
    synthetic anomalies, one table row each; a malformed descriptor is one error line."""
    import re

    script = load_script("vmpfd_descriptor")
    run, _ = smoke_run
    args = ["--data", "demo", "--image-size", "64", "--grid", "4"]
    assert script.main([*args, "--descriptor", f"pdn_small:64:{run / 'pdn.pt'}",
                        "--descriptor", "efficientnet_lite0:64:stage2,stage3"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\S+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [(r[0].split(":")[0], r[1]) for r in rows] == [("pdn_small", "384"), ("efficientnet_lite0", "64")]
    assert all(0 <= float(x) <= 100 for r in rows for x in r[2:5])
    assert script.main([*args, "--descriptor", "pdn_small"]) == 2
    assert "expected NAME:INPUT_SIZE:FILE" in capsys.readouterr().err
