"""apps.almrr end to end on the smoke preset: train → test report → predict outputs, plus user errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.almrr.__main__ import APP
from apps.almrr.torch_model import squared_distance

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, run_app):
    run = tmp_path_factory.mktemp("almrr") / "run"
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--out", str(run), "--device", "cpu")
    assert code == 0, err
    return run, out


def held_out_images(method):
    """The normal training images a run held out (train.val_fraction), stacked."""
    import torch

    from apps.common.data import open_data, split_validation

    data = open_data(method.config)
    _, val_idx = split_validation(data.train, float(method.config["train"]["val_fraction"]),
                                  int(method.config["train"]["seed"]))
    return torch.stack([data.train[i].image for i in val_idx])


def test_train_writes_run_and_report(smoke_run):
    run, out = smoke_run
    for name in ("config.toml", "checkpoint.pt", "model.pt", "train.log", "history.jsonl"):
        assert (run / name).is_file(), name
    assert "epoch 1/1" in out and "ETA" in out
    from ssmad.ssm import cpu_kernel_available

    # the log names the scan that runs (auto resolved), so a fallback to the slower one is visible
    assert f"selective scan {'cpu' if cpu_kernel_available() else 'torch'}" in (run / "train.log").read_text()
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    blob = json.dumps(metrics)
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "image_f1max"):
        assert key in blob
    assert (run / "report" / "metrics.md").read_text().count("|") > 10
    assert (run / "report" / "metrics.md").read_text().startswith("# apps.almrr\n")   # (no distance weight)
    assert list((run / "report" / "figures").rglob("*.png"))
    assert "distance only" in (run / "report" / "branches" / "metrics.md").read_text()
    from ssmad.datasets import DEFECT_KINDS

    by_type = json.loads((run / "report" / "by_type" / "metrics.json").read_text())["categories"]
    assert sorted(by_type) == sorted(f"brick: {kind}" for kind in DEFECT_KINDS)     # the demo's defect types


def test_by_defect_type_needs_two_types_and_normal_images():
    """Each defect type is scored against all normal images; with one type (or no normal image) there is no table."""
    from apps.common.evaluate import by_defect_type

    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.15, 0.3])
    masks = np.zeros((5, 4, 4), bool)
    masks[2:, 1, 1] = True
    maps = np.random.default_rng(0).random((5, 4, 4))
    out = by_defect_type("x", ["good", "good", "crack", "hole", "hole"], labels, scores, masks, maps)
    assert sorted(out) == ["x: crack", "x: hole"]
    assert out["x: crack"]["image_auroc"] == 1.0 and out["x: hole"]["image_auroc"] == 0.75
    assert by_defect_type("x", ["good", "good", "hole", "hole", "hole"], labels, scores, masks, maps) == {}
    assert by_defect_type("x", ["a", "b", "a"], np.ones(3, int), scores[:3], masks[:3], maps[:3]) == {}


def test_describe_says_why_the_cpu_falls_back_to_the_slower_scan(monkeypatch):
    import torch

    from apps.almrr.method import ALMRR
    from apps.common.config import load_config
    from ssmad.ssm import cpu_kernel as ck

    monkeypatch.setitem(ck._state, "fns", None)
    monkeypatch.setitem(ck._state, "why", "no C++ compiler found (install g++ or clang++, or set CXX)")
    method = ALMRR(load_config(APP.app_dir, "smoke", None, []), torch.device("cpu"))
    assert method.describe().endswith("; selective scan torch (compiled CPU kernel unavailable: no C++ compiler "
                                      f"found (install g++ or clang++, or set CXX)); precision {method.precision}")


def test_distance_norm_is_fitted_saved_and_applied(smoke_run):
    """The distance map's per-position reference is fitted on the held-out normal images after training, stored
    in model.pt, and a loaded model (same backbone, same reconstructor) subtracts it: its distance maps of those
    normal images average to about zero."""
    import torch

    run, _ = smoke_run
    method, ckpt = APP.load_method(run, torch.device("cpu"))
    # the smoke backbone has random weights (weights = "none"): only the checkpoint can restore them
    assert any(k.startswith("backbone.") for k in ckpt["state"]["modules"])
    state = ckpt["state"]["extra"]["distance_norm"]
    assert state["mean"].shape == (16, 16) and float(state["mean"].min()) > 0     # smoke: 16×16 feature grid
    images = held_out_images(method)
    with torch.no_grad():
        out = method.predict(images)
        raw = method.raw_distance(images)
    assert abs(float(out.extras["distance"].mean())) < 0.2 * float(raw.mean())


def test_border_diagnostic_script(smoke_run, tmp_path, capsys, load_script):
    """scripts/almrr_border.py (the border figures of docs/history/results-mt.md) runs on a finished run and
    refuses others."""
    import re

    script = load_script("almrr_border")
    run, _ = smoke_run
    assert script.main([str(run)]) == 0
    out = capsys.readouterr().out
    share = re.search(r"within the border band: ([0-9.]+)% of the images", out)
    assert share and 0 <= float(share.group(1)) <= 100, out
    aurocs = re.findall(r"image AUROC, (.+): ([0-9.]+)", out)
    assert [name for name, _ in aurocs] == ["raw maximum", "raw maximum, border band left out",
                                            "maximum after distance_norm"]
    assert all(0 <= float(v) <= 100 for _, v in aurocs)
    assert script.main([str(tmp_path / "nothing")]) == 2
    assert "model.pt not found" in capsys.readouterr().err


def test_padim_baseline_script(smoke_run, tmp_path, capsys, load_script):
    """scripts/padim_baseline.py fits PaDiM on a run's features and training images and prints the test metrics,
    overall and per defect type; a channel subset bounds its memory; bad arguments and folders are clear errors."""
    import re

    from ssmad.datasets import DEFECT_KINDS

    script = load_script("padim_baseline")
    run, _ = smoke_run
    assert script.main([str(run), "--channels", "8"]) == 0
    out = capsys.readouterr().out
    assert "(8 of " in out
    rows = {m.group(1): [float(v) for v in m.group(2).split(" | ")]
            for m in re.finditer(r"^\| (\w+) \| ([0-9. |]+) \|$", out, re.M)}
    assert sorted(rows) == sorted(["all", *DEFECT_KINDS]) and all(len(v) == 7 for v in rows.values())
    assert all(0 <= x <= 100 for v in rows.values() for x in v)
    assert script.main([str(tmp_path / "nothing")]) == 2
    assert "model.pt not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main([str(run), "--ridge", "0"])
    assert "--ridge: expected a number > 0" in capsys.readouterr().err


def test_blend_script_scores_weights_on_synthetic_anomalies(smoke_run, tmp_path, capsys, load_script):
    """scripts/almrr_blend.py scores distance weights on synthetic anomalies of the held-out normal images."""
    import re

    script = load_script("almrr_blend")
    run, _ = smoke_run
    assert script.main([str(run), "--weights", "0,0.5", "--repeats", "8"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| ([0-9.]+) \| (.+) \|$", out, re.M)
    assert [w for w, _ in rows] == ["0", "0.5"], out
    for _, cells in rows:
        values = [float(v) for v in cells.split(" | ")]
        assert len(values) == 7 and all(0 <= v <= 100 for v in values), out
    assert rows[0][1] != rows[1][1]                                     # the weight changes the map
    assert script.main([str(run), "--weights", "0", "--on", "test"]) == 0   # the smoke test split: normal + defects
    out = capsys.readouterr().out
    assert "the test split" in out
    row = [float(v) for v in re.search(r"^\| 0 \| (.+) \|$", out, re.M).group(1).split(" | ")]
    # w = 0 is the run's own map (the smoke preset has no distance weight): the figures of its test report
    mean = json.loads((run / "report" / "metrics.json").read_text())["mean"]
    assert row == pytest.approx([100 * mean[m] for m in mean], abs=0.051)
    assert script.main([str(tmp_path / "nothing")]) == 2
    assert "model.pt not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        script.main([str(run), "--weights", "0,-1"])
    assert exc.value.code == 2 and "--weights" in capsys.readouterr().err


def test_loco_script_chooses_each_rule_without_the_type_it_scores(tmp_path, capsys, run_app, load_script):
    """scripts/almrr_loco.py: per defect type, the run's map, the distance alone, PaDiM, the rule chosen on the other
    types and every rule; the maps are kept in --maps and read back to the same tables; the choice for a type is
    the best pixel AP on the others."""
    import re

    import torch

    from ssmad.datasets import DEFECT_KINDS
    from ssmad.scoring import evaluate

    run = tmp_path / "run"
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--set", "method.distance_weight=1", "--no-test",
                           "--out", str(run), "--device", "cpu")
    assert code == 0, err
    script = load_script("almrr_loco")
    cache = tmp_path / "maps.npz"
    assert script.main([str(run), "--maps", str(cache)]) == 0
    first = capsys.readouterr().out
    assert cache.is_file()
    assert script.main([str(run), "--maps", str(cache)]) == 0
    second = capsys.readouterr().out
    assert second.startswith(f"maps read from {cache}") and second.split("\n", 1)[1] == first
    kinds = re.findall(r"^### (\w+) \(", first, re.M)
    assert sorted(kinds) == sorted(DEFECT_KINDS)
    chosen = dict(re.findall(r"(\w+): ((?:sum|max) [0-9.]+)", first.split("without each type: ")[1].split("\n")[0]))
    assert sorted(chosen) == sorted(kinds)
    # the run's map is sum 1: its row is the "sum 1" row of every table
    for block in first.split("### ")[1:]:
        rows = dict(re.findall(r"^\| ([^|]+?) \| ([0-9. |]+) \|$", block, re.M))
        assert rows["the run's map"] == rows["sum 1"] and len(rows["PaDiM"].split(" | ")) == 7
    with np.load(cache) as z:
        maps = {k: z[k] for k in z.files}
    rows, again = script.evaluate_rows(maps, lambda m: m.flatten(1).amax(1))
    assert again == chosen
    for kind, rule in chosen.items():                  # the choice: the best pixel AP without that type
        others = (maps["labels"] == 0) | ((maps["labels"] == 1) & (maps["types"] != kind))
        masks = maps["masks"][others]
        ap = {script.rule_name(r): evaluate(None, None, masks, script.fuse_rule(maps, r)[
            torch.from_numpy(others)].numpy(), ["pixel_ap"])["pixel_ap"] for r in script.RULES}
        assert ap[rule] == max(ap.values())
    run_plain = tmp_path / "plain"
    assert run_app(APP, "train", "--preset", "smoke", "--no-test", "--out", str(run_plain), "--device", "cpu")[0] == 0
    assert script.main([str(run_plain)]) == 2
    assert "no fitted distance_scale" in capsys.readouterr().err


def test_test_verb_and_predict(smoke_run, tmp_path, run_app):
    run, _ = smoke_run
    code, out, err = run_app(APP, "test", "--run", str(run), "--out", str(tmp_path / "rep"), "--figures", "2")
    assert code == 0, err
    assert (tmp_path / "rep" / "metrics.md").is_file() and "mean" in out
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(imgs / "a.png")
    Image.fromarray((rng.random((30, 30)) * 255).astype(np.uint8), mode="L").save(imgs / "b.jpg")
    out_dir = tmp_path / "pred"
    code, out, err = run_app(APP, "predict", "--run", str(run), str(imgs), "--out", str(out_dir), "--save-maps")
    assert code == 0, err
    rows = list(csv.DictReader(open(out_dir / "predictions.csv")))
    assert [r["image"].split("/")[-1] for r in rows] == ["a.png", "b.jpg"]
    assert all(r["decision"] in ("normal", "anomalous") for r in rows)
    flagged = sum(r["decision"] == "anomalous" for r in rows)
    assert f"2 images scored, {flagged} anomalous (score above {float(rows[0]['threshold']):.6g})" in out
    amap = np.load(out_dir / "maps" / "a.npy")
    assert amap.shape == (40, 50) and amap.dtype == np.float32  # input resolution
    dist = np.load(out_dir / "maps" / "a.distance.npy")            # the branch map alone, same resolution
    assert dist.shape == (40, 50) and np.isfinite(dist).all() and not np.allclose(dist, amap)
    assert Image.open(out_dir / "overlays" / "b.png").size == (30, 30)
    assert Image.open(out_dir / "masks" / "a.png").size == (50, 40)


def test_report_decisions_use_the_runs_threshold(smoke_run):
    """The report says what the run's own image threshold (the one predict uses: score > threshold) decides on
    the test images."""
    import torch

    run, out = smoke_run
    assert "decisions at the run's image threshold" in out
    row = json.loads((run / "report" / "decisions.json").read_text())["categories"]["brick"]
    assert "0.99 quantile" in (run / "report" / "decisions.md").read_text()
    from apps.common.data import open_data
    from apps.common.inference import infer

    method, ckpt = APP.load_method(run, torch.device("cpu"))
    assert row["threshold"] == pytest.approx(ckpt["thresholds"]["image"])
    test = open_data(ckpt["config"]).test
    scores, _, _, _ = infer(method, test)
    labels = np.array(test.labels, dtype=bool)
    flagged = scores > ckpt["thresholds"]["image"]
    assert (row["defective"], row["normal"]) == (labels.sum(), (~labels).sum())
    assert (row["defective_flagged"], row["normal_flagged"]) == ((flagged & labels).sum(), (flagged & ~labels).sum())


def test_resume_continues_and_refuses_overwrite(smoke_run, tmp_path, run_app):
    run, _ = smoke_run
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--out", str(run))
    assert code == 2 and "already holds a run" in err
    # a resumed run keeps its configuration: what it may not change is one clear error, not silently ignored
    for argv, needle in ((["--set", "train.lr=1"], "--set train.lr: --resume keeps"),
                         (["--preset", "smoke"], "--preset"), (["--seed", "3"], "--seed"),
                         (["--data", "mtd:/x"], "--data may only give its new place")):
        code, _, err = run_app(APP, "train", "--resume", "--out", str(run), *argv, "--no-test")
        assert code == 2 and err.startswith("error: ") and needle in err, err
    code, out, err = run_app(APP, "train", "--resume", "--out", str(run), "--epochs", "2", "--set",
                             "train.max_minutes=30", "--no-test")
    assert code == 0, err
    assert "resumed from" in out and "epoch 2/2" in out
    hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    import tomllib

    stored = tomllib.loads((run / "config.toml").read_text())["train"]
    assert stored["max_minutes"] == 30 and stored["epochs"] == 2 and stored["lr"] != 1


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "mvtec:/nonexistent/mvtec", "--category", "carpet"], "/nonexistent/mvtec"),
    (["train", "--preset", "smoke", "--set", "pipeline.reconstructor.name=vimm"], "available: vim"),
    (["train", "--preset", "smoke", "--set", "pipeline.reconstructor.dpeth=3"], "'dpeth'"),
    (["train", "--preset", "smoke", "--set", "train.lr=abc", "--no-test"], "train.lr"),
    (["train", "--preset", "smok"], "available: smoke"),
    (["train", "--preset", "smoke", "--set", "tarin.epochs=1"], "tarin"),
    (["test", "--run", "/nonexistent/run"], "/nonexistent/run"),
    (["train", "--data", "folder:/nonexistent/imgs"], "missing required parameter 'normal' (give it in [data.params]"),
    (["train", "--preset", "smoke", "--device", "tpu"], "--device 'tpu'"),
    (["train", "--preset", "smoke", "--set", 'method.refiner_inputs=["distanse"]'], "method.refiner_inputs"),
    (["train", "--preset", "smoke", "--set", "method.distance_weight=-0.1"], "method.distance_weight"),
    (["train", "--preset", "smoke", "--set", "method.distance_weight=0.1", "--set",
      "pipeline.distance_scale.enabled=false"], "pipeline.distance_scale"),
    (["train", "--preset", "smoke", "--set", "method.distance_weight=atuo"], 'a number >= 0 or "auto"'),
    (["train", "--preset", "smoke", "--set", "method.distance_weight=auto", "--set",
      "pipeline.distance_scale.enabled=false"], "pipeline.distance_scale"),
    (["train", "--preset", "smoke", "--set", "method.distance_weight=auto", "--set",
      "method.distance_weight_candidates=[0.1, -1]"], "method.distance_weight_candidates"),
    # misspelt [method] / [data] keys were stored and ignored; bad method values raised a traceback or trained
    (["train", "--preset", "smoke", "--set", "method.feature_sise=16"], "unknown key method.feature_sise; allowed: "
                                                                        "feature_size"),
    (["train", "--preset", "smoke", "--set", "data.image_sise=64"], "unknown key data.image_sise; allowed: image_size"),
    (["train", "--preset", "smoke", "--set", 'method.lambda_rec="abc"'], "method.lambda_rec must be a number >= 0"),
    (["train", "--preset", "smoke", "--set", "method.lambda_dice=-5"], "method.lambda_dice must be a number >= 0"),
    (["train", "--preset", "smoke", "--set", "method.focal_gamma=true"], "method.focal_gamma must be a number >= 0"),
])
def test_user_errors_are_one_clear_line(argv, needle, tmp_path, run_app):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "r")]
    code, out, err = run_app(APP, *argv)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


@pytest.mark.parametrize("app", ["almrr", "vmpfd"])
def test_every_role_declares_its_alternatives(app):
    """``components`` lists for each role the components declared to work there (it listed every component of
    the role's kind, e.g. the mdn head as a refiner, which fails); each is registered under the role's kind."""
    import importlib
    import tomllib

    from ssmad.core import components

    cls = importlib.import_module(f"apps.{app}.__main__").APP.method_cls
    pipeline = tomllib.loads((ROOT / "apps" / app / "pipeline.toml").read_text())["pipeline"]
    assert {e["role"] for e in pipeline} == set(cls.alternatives)
    for entry in pipeline:
        names = {c.name for c in components(entry["kind"])}
        assert set(cls.alternatives[entry["role"]]) <= names, entry["role"]


def test_components_lists_pipeline_and_alternatives(run_app):
    code, out, _ = run_app(APP, "components")
    assert code == 0
    assert "reconstructor/vim" in out and "cnn1x1" in out and "transformer" in out and "backbone/resnet50" in out


def test_time_budget_stops_training_early(tmp_path, run_app):
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--set", "train.max_minutes=1e-6", "--set",
                             "train.epochs=3", "--out", str(tmp_path / "r"), "--no-test")
    assert code == 0, err
    assert "train.max_minutes = 1e-06 reached at epoch 1, step 1/2" in out  # 11 images, full batches of 4
    hist = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 1 and hist[0]["epoch"] < 1  # a partial first epoch, then model.pt
    assert (tmp_path / "r" / "model.pt").is_file()
    # --resume with a new budget: the cut epoch runs again in full (the checkpoint counts completed epochs only)
    code, out, err = run_app(APP, "train", "--resume", "--out", str(tmp_path / "r"), "--set", "train.max_minutes=0",
                             "--no-test")
    assert code == 0, err
    assert "after epoch 0/3 (epoch 1, cut short by train.max_minutes, runs again in full)" in out
    hist = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [0.5, 1, 2, 3]


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, run_app, monkeypatch):
    import torch

    from apps.almrr.method import ALMRR

    run = tmp_path / "r"
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--out", str(run), "--no-test")
    assert code == 0, err
    before = (run / "checkpoint.pt").read_bytes()
    real = ALMRR.train_step

    def poisoned(self, batch):
        out = real(self, batch)
        out["loss"] = out["loss"] * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(ALMRR, "train_step", poisoned)
    code, out, err = run_app(APP, "train", "--resume", "--out", str(run), "--epochs", "2", "--no-test")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "loss became nan at epoch 2, step 1" in lines[0] and "checkpoint.pt" in lines[0]
    assert (run / "checkpoint.pt").read_bytes() == before  # the last good epoch is untouched


def test_own_folder_of_images(tmp_path, run_app):
    """The "my own folder" case: normal and defective images in folders, no masks (image-level metrics only)."""
    rng = np.random.default_rng(0)
    for sub, n in (("good", 10), ("bad", 3)):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for i in range(n):
            a = (rng.random((40, 40)) * 60 + 100).astype(np.uint8)
            if sub == "bad":
                a[8:18, 8:18] = 250
            Image.fromarray(a).save(tmp_path / "data" / sub / f"{i}.png")
    run = tmp_path / "run"
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--data", f"folder:{tmp_path / 'data'}",
                             "--data-param", "normal=good", "--data-param", "abnormal=bad", "--out", str(run))
    assert code == 0, err
    metrics = json.loads((run / "report" / "metrics.json").read_text())["mean"]
    assert 0 <= metrics["image_auroc"] <= 1 and metrics["pixel_ap"] is None  # no masks: pixel metrics undefined


def test_unfinished_checkpoint_reports_the_raw_distance(smoke_run):
    """An epoch checkpoint (training interrupted before the fit) still tests: the distance comes raw, with a warning."""
    import torch

    run, _ = smoke_run
    method, _ = APP.load_method(run / "checkpoint.pt", torch.device("cpu"))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="distance_norm: not fitted"):
        out = method.predict(images)
        raw = method.raw_distance(images)
    expected = torch.nn.functional.interpolate(raw, size=(64, 64), mode="bilinear", align_corners=False)
    assert method.distance.smooth is not None                     # the default pipeline smooths the distance map
    torch.testing.assert_close(out.extras["distance"], method.distance.smooth(expected))


def test_mahalanobis_distance_is_fitted_saved_and_applied():
    """pipeline.distance = mahalanobis: after_training fits it on the held-out images' residuals F̂ − F, the model's
    state carries it, and the distance map is the whitened residual; before the fit the map warns and uses the mean
    squared distance. The refiner's distance input stays the mean squared distance either way."""
    import torch

    from apps.almrr.method import ALMRR
    from apps.common.config import load_config
    from ssmad.scoring import Mahalanobis

    cpu = torch.device("cpu")
    config = load_config(APP.app_dir, "smoke", None, ["pipeline.distance.name=mahalanobis"])
    torch.manual_seed(0)
    method = ALMRR(config, cpu)
    method.train(False)
    normal, other = list(torch.rand(6, 3, 64, 64)), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = method.model.features(other)
        recon = method.run_module("reconstructor", feats)
        with pytest.warns(RuntimeWarning, match=r"pipeline.distance \(Mahalanobis.*not fitted.*mean squared"):
            raw = method.raw_distance(other)
        torch.testing.assert_close(raw, squared_distance(recon, feats))
        method.after_training(normal)
        normal_feats = method.model.features(torch.stack(normal))
        expected = Mahalanobis().fit(method.run_module("reconstructor", normal_feats) - normal_feats)
        torch.testing.assert_close(method.raw_distance(other), expected(recon - feats))
        assert not torch.allclose(method.raw_distance(other), raw)
        loaded = ALMRR(config, cpu)
        loaded.load_state_dict(method.state_dict())
        loaded.train(False)
        assert set(method.state_dict()["extra"]) >= {"distance", "distance_norm"}
        torch.testing.assert_close(loaded.predict(other).extras["distance"], method.predict(other).extras["distance"])
    assert ALMRR(load_config(APP.app_dir, "cpu", None, []), cpu).map_note() == (
        "map = refined + 1 x scaled position_mahalanobis distance (method.distance_weight)")
    auto = ['method.distance_weight="auto"', "method.image_distance_weight=1"]
    assert ALMRR(load_config(APP.app_dir, "cpu", None, auto), cpu).map_note() == (
        "map = refined + 0 x scaled position_mahalanobis distance (auto, not chosen yet: the refined map alone); "
        "image score of refined + 1 x scaled distance")
    with pytest.raises(Exception, match=r"pipeline.distance: distance 'position_mahalanobis': 1792 channels at 4096 "
                                        r"positions need about 245\.0 GB.*e\.g\. 228"):   # the paper's ResNet-50
        ALMRR(load_config(APP.app_dir, None, None, ["pipeline.distance.name=position_mahalanobis",
                                                    "pipeline.backbone.weights=none"]), cpu)
    with pytest.raises(Exception, match="pipeline.distance: .*ridge"):
        ALMRR(load_config(APP.app_dir, "smoke", None, ["pipeline.distance.name=mahalanobis",
                                                        "pipeline.distance.ridge=-1"]), cpu)


def test_position_mahalanobis_is_fitted_on_the_training_images():
    """pipeline.distance = position_mahalanobis wants many images: after_training fits it on the residuals of the
    training images it is given (read lazily), not on the few held-out ones, and says so in the log; without them
    it is fitted on the held-out images; while an epoch is scored, on the training images prepare kept."""
    import torch

    from apps.almrr.method import ALMRR
    from apps.common.config import load_config
    from apps.common.data import LazyImages
    from ssmad.core import Sample
    from ssmad.scoring import PositionMahalanobis

    cpu = torch.device("cpu")
    config = load_config(APP.app_dir, "smoke", None, ["pipeline.distance.name=position_mahalanobis"])
    torch.manual_seed(0)
    method = ALMRR(config, cpu)
    method.train(False)
    held, train, other = list(torch.rand(3, 3, 64, 64)), torch.rand(9, 3, 64, 64), torch.rand(2, 3, 64, 64)
    samples = [Sample(image=im, mask=None, label=0, path=f"t{i}", original_size=(64, 64), defect_type="good")
               for i, im in enumerate(train)]

    def fitted_on(images):
        with torch.no_grad():
            f = method.model.features(images)
            return PositionMahalanobis().fit(method.run_module("reconstructor", f) - f)

    with torch.no_grad():
        f = method.model.features(other)
        residual = method.run_module("reconstructor", f) - f
        lines = method.after_training(held, train_images=LazyImages(samples, list(range(1, 9))))
        assert any("fitted on the residuals of the 8 training images" in line for line in lines)
        torch.testing.assert_close(method.distance.metric(residual), fitted_on(train[1:])(residual))
        method.after_training(held)
        torch.testing.assert_close(method.distance.metric(residual), fitted_on(torch.stack(held))(residual))
        # scoring an epoch: fitted on (a spread of) the training images kept by prepare, not on the images it scores
        assert "distance" in method.state_dict()["extra"]
        method.prepare(None, samples, list(range(9)))
        method.validation_score(held)
        torch.testing.assert_close(method.distance.metric(residual), fitted_on(train)(residual))
        # an epoch's fit (part of the training images) stays out of its checkpoint, with what was fitted on it
        assert method.state_dict()["extra"] == {}


def test_distance_smoothing_is_a_pipeline_entry_and_branches_score_like_the_method():
    """distance_smooth (Gaussian, input pixels) can be switched off from the component list; the distance map
    reported alone scores by the pipeline's box-filter max, as with the refiner disabled."""
    import numpy as np
    import torch

    from apps.almrr.method import ALMRR
    from apps.common.config import load_config

    on = ALMRR(load_config(APP.app_dir, "smoke", None, []), torch.device("cpu"))
    off = ALMRR(load_config(APP.app_dir, "smoke", None, ["pipeline.distance_smooth.enabled=false"]),
                torch.device("cpu"))
    assert on.distance.smooth.sigma == 4.0 and off.distance.smooth is None
    maps = np.zeros((2, 64, 64), np.float32)
    maps[0, 10, 10] = 1.0                                          # one hot pixel: the 9×9 box mean is 1/81
    maps[1, 30:40, 30:40] = 0.5                                    # a blob: the box mean keeps 0.5
    np.testing.assert_allclose(on.branch_score(maps), [1 / 81, 0.5], rtol=1e-5)
    np.testing.assert_allclose(on.branch_score(maps), on.score(maps))


def test_refiner_inputs_are_a_config_list():
    """method.refiner_inputs picks the refiner's input channels; the distance channel is log ‖F̂ − F‖² and carries
    the refiner's gradient back into the reconstructor; a stored config without the key is the paper's pair."""
    import torch

    from apps.almrr.method import ALMRR
    from apps.common.config import load_config

    cfg = load_config(APP.app_dir, "smoke", None, ['method.refiner_inputs=["recon_mean", "feature_mean", "distance"]'])
    m = ALMRR(cfg, torch.device("cpu"))
    m.modules["refiner"].eval()
    convs = [mod for mod in m.modules["refiner"].modules() if isinstance(mod, torch.nn.Conv2d)]
    first_conv = next(c for c in convs if c.in_channels == 3)                 # the input layer takes 3 channels
    feats = torch.rand(2, 5, 32, 32)
    recon = (feats + 0.1 * torch.randn(2, 5, 32, 32)).requires_grad_()
    m.model.refine(recon, feats)[:, 1].sum().backward()
    assert recon.grad.abs().sum() > 0
    seen = {}
    first_conv.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))  # (returns None: output kept)
    with torch.no_grad():
        m.model.refine(recon, feats)
    means = torch.cat([recon.mean(1, keepdim=True), feats.mean(1, keepdim=True)], 1)
    torch.testing.assert_close(seen["x"], torch.cat([means, squared_distance(recon, feats).log()], 1))
    old = load_config(APP.app_dir, "smoke", None, [])
    del old["method"]["refiner_inputs"]
    assert ALMRR(old, torch.device("cpu")).model.refiner_inputs == ("recon_mean", "feature_mean")


def test_distance_weight_adds_the_scaled_distance_map(tmp_path, run_app):
    """method.distance_weight w: the map is refined + w · the distance map scaled by its 0.9 / 0.999 quantiles over
    the held-out normal images (fitted after training, stored in model.pt); w = 0 and old configs: refined alone."""
    import torch

    from apps.almrr.method import ALMRR
    from apps.common.config import load_config

    run = tmp_path / "run"
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--set", "method.distance_weight=0.5", "--no-test",
                           "--out", str(run), "--device", "cpu")
    assert code == 0, err
    method, ckpt = APP.load_method(run, torch.device("cpu"))
    assert set(ckpt["state"]["extra"]) == {"distance_norm", "distance_scale"}
    images = held_out_images(method)
    with torch.no_grad():
        blended = method.predict(images)
        method.distance_weight = 0.0
        refined = method.predict(images)
    dist = blended.extras["distance"]
    lo, hi = torch.quantile(dist.flatten().double(), torch.tensor([0.9, 0.999], dtype=torch.double))
    scaled = method.distance.scaled(dist)
    torch.testing.assert_close(scaled, ((dist - lo) / (hi - lo)).float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(blended.anomaly_map, refined.anomaly_map + 0.5 * scaled)
    assert not torch.equal(blended.score, refined.score)
    # method.image_distance_weight: the image score of refined + that weight · scaled, the map unchanged
    assert method.image_weight is None
    with torch.no_grad():
        method.distance_weight, method.image_weight = 0.5, 2.0
        split = method.predict(images)
    torch.testing.assert_close(split.anomaly_map, blended.anomaly_map)
    torch.testing.assert_close(split.score, method.score(refined.anomaly_map + 2.0 * scaled))
    assert method.map_note().endswith("; image score of refined + 2 x scaled distance")
    # method.fusion = "max": a pixel scores what the branch that finds it most gives it
    with torch.no_grad():
        method.fusion, method.image_weight = "max", None
        either = method.predict(images)
    torch.testing.assert_close(either.anomaly_map, torch.maximum(refined.anomaly_map, 0.5 * scaled))
    torch.testing.assert_close(either.score, method.score(either.anomaly_map))
    assert method.map_note().startswith("map = max(refined, 0.5 x scaled distance)")
    with pytest.raises(Exception, match=r"method.fusion must be one of \['sum', 'max'\], got 'mean'"):
        ALMRR(load_config(APP.app_dir, "smoke", None, ['method.fusion="mean"']), torch.device("cpu"))
    old = load_config(APP.app_dir, "smoke", None, [])
    del old["method"]["distance_weight"], old["method"]["image_distance_weight"]
    old["pipeline"] = [e for e in old["pipeline"] if e["role"] != "distance_scale"]
    assert ALMRR(old, torch.device("cpu")).distance_weight == 0.0
    with pytest.raises(Exception, match='method.image_distance_weight must be a number >= 0 or "map"'):
        ALMRR(load_config(APP.app_dir, "smoke", None, ["method.image_distance_weight=-1"]), torch.device("cpu"))


def test_auto_distance_weight_is_the_best_pixel_ap_on_synthetic_anomalies(tmp_path, run_app, capsys, load_script):
    """method.distance_weight = "auto": after training, the candidate with the highest pixel AP on synthetic anomalies
    of the held-out images (seeded by train.seed) is chosen, logged, stored in model.pt and used by predict; the
    blend script scores the same maps."""
    import torch

    from apps.almrr.weight_choice import FEW_IMAGES as AUTO_FEW_IMAGES
    from apps.almrr.weight_choice import REPEATS as AUTO_REPEATS
    from apps.almrr.weight_choice import synthetic_maps
    from ssmad.scoring import evaluate

    run = tmp_path / "run"
    # (no 0 among the candidates: whatever is chosen changes the map, which the predict check below needs)
    code, _, err = run_app(APP, "train", "--preset", "smoke", "--set", "method.distance_weight=auto", "--set",
                           "method.distance_weight_candidates=[3, 0.5, 1]", "--no-test", "--out", str(run),
                           "--device", "cpu")
    assert code == 0, err
    method, ckpt = APP.load_method(run, torch.device("cpu"))
    choice = ckpt["state"]["extra"]["distance_weight"]
    assert method.auto_weight and method.weight_candidates == [0.5, 1.0, 3.0]
    assert set(choice["pixel_ap"]) == {"0.5", "1.0", "3.0"} and method.distance_weight == choice["weight"]
    log = (run / "train.log").read_text()
    assert f"method.distance_weight = auto: {choice['weight']:g}, the highest pixel AP" in log

    # the choice, recomputed from the maps
    images = list(held_out_images(method))
    assert ("this choice is noisy" in log) == (len(images) < AUTO_FEW_IMAGES)
    maps = synthetic_maps(method, images, np.random.default_rng(int(method.config["train"]["seed"])), AUTO_REPEATS)
    assert len(maps["mask"]) == 2 * AUTO_REPEATS * len(images) and maps["mask"].any()
    assert not maps["mask"][maps["clean"]].any() and int(maps["repeat"].max()) == AUTO_REPEATS - 1
    scaled = method.distance.scaled(maps["distance"])
    ap = {w: float(evaluate(None, None, maps["mask"], maps["refined"] + w * scaled, ["pixel_ap"])["pixel_ap"])
          for w in (0.5, 1.0, 3.0)}
    assert ap == pytest.approx({float(k): v for k, v in choice["pixel_ap"].items()})
    assert choice["weight"] == max(ap, key=lambda w: (ap[w], -w))

    # predict adds the chosen weight; before a choice exists (an epoch checkpoint) the refined map alone, with a warning
    batch = torch.stack(images)
    with torch.no_grad():
        blended = method.predict(batch)
        method.weight_choice = None
        with pytest.warns(RuntimeWarning, match="no weight chosen"):
            refined = method.predict(batch)
    torch.testing.assert_close(blended.anomaly_map, refined.anomaly_map
                               + choice["weight"] * method.distance.scaled(blended.extras["distance"]))

    # the test report's title states the weight; a run without a distance weight has the plain title
    code, _, err = run_app(APP, "test", "--run", str(run), "--figures", "0", "--device", "cpu")
    assert code == 0, err
    title = (run / "report" / "metrics.md").read_text().splitlines()[0]
    assert title == f"# apps.almrr (map = refined + {choice['weight']:g} x scaled distance (chosen after training))"

    # the blend script shows the run's choice and the same pixel APs
    import re

    capsys.readouterr()
    assert load_script("almrr_blend").main([str(run), "--weights", "0.5,1,3"]) == 0
    out = capsys.readouterr().out
    assert f"auto chose {choice['weight']:g}" in out
    rows = {float(w): float(cells.split(" | ")[4]) for w, cells in re.findall(r"^\| ([0-9.]+) \| (.+) \|$", out, re.M)}
    assert rows == pytest.approx({w: 100 * v for w, v in ap.items()}, abs=0.051)
    # --image-weight: one image score for every row (what method.image_distance_weight does); pixels unchanged
    assert load_script("almrr_blend").main([str(run), "--weights", "0.5,1", "--image-weight", "1"]) == 0
    out = capsys.readouterr().out
    cells = [c.split(" | ") for _, c in re.findall(r"^\| ([0-9.]+) \| (.+) \|$", out, re.M)]
    assert "image scores: refined + 1 x scaled distance" in out and cells[0][0] == cells[1][0]
    assert [float(c[4]) for c in cells] == pytest.approx([100 * ap[0.5], 100 * ap[1.0]], abs=0.051)


def test_same_seed_same_training(tmp_path, run_app):
    """--seed fixes the whole run, the initial weights included (they were drawn before the seed was set)."""
    def history(name: str, seed: str) -> list[dict]:
        code, _, err = run_app(APP, "train", "--preset", "smoke", "--seed", seed, "--no-test", "--out",
                               str(tmp_path / name), "--device", "cpu")
        assert code == 0, err
        rows = [json.loads(line) for line in (tmp_path / name / "history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    first = history("a", "3")
    assert history("b", "3") == first
    assert history("c", "4") != first


def _history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_select_best_keeps_the_best_epoch_across_a_resume(tmp_path, run_app, monkeypatch):
    """train.select = "best": the model of the epoch that scores best is the one model.pt holds when it beats the
    last one (here scores without a bootstrap: by the plain difference), also when the best epoch came before a
    --resume; the scores are in the history and the log."""
    import copy

    import torch

    from apps.almrr.method import ALMRR
    from apps.common.method import Validation

    # epochs 1-3, then the comparison at the end (the last model, then the best); after the resume: epoch 4, then
    # the comparison again
    scores = iter([0.2, 0.9, 0.4, 0.4, 0.9, 0.1, 0.1, 0.9])
    seen: dict[int, dict] = {}

    def scripted(self, images):
        seen[len(seen) + 1] = copy.deepcopy(self.state_dict()["modules"])
        return Validation(next(scores), "scripted score")

    monkeypatch.setattr(ALMRR, "validation_score", scripted)
    run = tmp_path / "r"
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--set", 'train.select="best"', "--epochs", "3",
                             "--out", str(run), "--no-test", "--device", "cpu")
    assert code == 0, err
    assert [h["select"] for h in _history(run)] == [0.2, 0.9, 0.4]
    assert "epoch 2: scripted score 90.0 (best so far, kept in best.pt)" in out
    assert "the model of epoch 2 is kept, not the last one (epoch 3): on 1 held-out images it scores +50.0" in out
    assert "against the last epoch's (scripted score)" in out          # one description when both read the same

    def kept(name: str) -> dict:
        return torch.load(run / name, weights_only=True)["state"]["modules"]

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(kept("model.pt"), seen[2]) and not same(kept("model.pt"), seen[3])
    assert same(seen[4], seen[3]) and same(seen[5], seen[2])          # what the comparison scored
    assert torch.load(run / "model.pt", weights_only=True)["selected_epoch"] == 2
    # a resumed run still knows its best epoch (and best.pt): epoch 4 scores lower, so epoch 2 stays
    code, out, err = run_app(APP, "train", "--resume", "--out", str(run), "--epochs", "4", "--no-test")
    assert code == 0, err
    assert [h["select"] for h in _history(run)] == [0.2, 0.9, 0.4, 0.1]
    assert "the model of epoch 2 is kept" in out and same(kept("model.pt"), seen[2])


@pytest.mark.parametrize("lead, kept_epoch", [(0.0, 2), (0.3, 1)])
def test_select_best_keeps_the_last_epoch_unless_the_best_truly_beats_it(lead, kept_epoch, tmp_path, run_app,
                                                                         monkeypatch):
    """At the end the best epoch and the last are compared on the same images with a paired bootstrap: a lead
    within twice its standard error keeps the last (longest-trained) model."""
    import copy

    import torch

    from apps.almrr.method import ALMRR
    from apps.common.method import Validation
    from ssmad.scoring import GroupedAP

    rng = np.random.default_rng(0)
    scores_last = rng.random((20, 16))                    # 20 images of 16 pixels, a quarter of them anomalous
    labels = rng.random((20, 16)) < 0.25
    groups = np.repeat(np.arange(20), 16).reshape(20, 16)
    scores_best = scores_last + lead * labels             # lead 0: the same AP; 0.3: far better
    calls = iter([(0.9, scores_best), (0.5, scores_last), (0.5, scores_last), (0.9, scores_best)])
    seen = []

    def scripted(self, images):
        seen.append(copy.deepcopy(self.state_dict()["modules"]))
        score, maps = next(calls)
        return Validation(score, f"scripted, weight {score:g}", GroupedAP(maps, labels, groups))

    monkeypatch.setattr(ALMRR, "validation_score", scripted)
    run = tmp_path / "r"
    code, out, err = run_app(APP, "train", "--preset", "smoke", "--set", 'train.select="best"', "--epochs", "2",
                             "--out", str(run), "--no-test", "--device", "cpu")
    assert code == 0, err
    model = torch.load(run / "model.pt", weights_only=True)
    assert model["selected_epoch"] == kept_epoch
    assert all(torch.equal(v, seen[kept_epoch - 1][k]) for k, v in model["state"]["modules"].items())
    assert ("the last epoch's model (epoch 2) is kept" in out) == (kept_epoch == 2)
    # the two models' scores can be described differently (e.g. each with the distance weight chosen for it)
    assert "against the last epoch's (best: scripted, weight 0.9; last: scripted, weight 0.5)" in out


def test_select_best_scores_without_changing_the_training(tmp_path, run_app):
    """The real score: the pixel AP on synthetic anomalies of the held-out images of the map predict makes (here a
    fixed distance weight), recorded per epoch; scoring leaves the training itself as it was (same losses)."""
    import torch

    def train(name: str, *argv: str) -> list[dict]:
        code, _, err = run_app(APP, "train", "--preset", "smoke", "--epochs", "2", "--set",
                               "method.distance_weight=0.5", *argv, "--no-test", "--out", str(tmp_path / name),
                               "--device", "cpu")
        assert code == 0, err
        return _history(tmp_path / name)

    plain = train("last")
    best = train("best", "--set", 'train.select="best"')
    assert [{k: v for k, v in h.items() if k not in ("seconds", "select")} for h in best] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in plain]
    assert all(0 <= h["select"] <= 1 for h in best) and not (tmp_path / "last" / "best.pt").exists()
    log = (tmp_path / "best" / "train.log").read_text()
    assert "pixel AP on synthetic anomalies of 1 held-out images" in log
    # the kept model scores what its epoch recorded (the smoke run holds out one image: the scored set is all of them)
    method, ckpt = APP.load_method(tmp_path / "best", torch.device("cpu"))
    selected = ckpt["selected_epoch"]
    score = method.validation_score(list(held_out_images(method))).score
    assert score == pytest.approx(next(h["select"] for h in best if h["epoch"] == selected))
    # the best-scoring epoch, or the last one when the best is not better beyond the score's noise (which epoch
    # wins depends on the arithmetic, e.g. the thread count)
    top = max(best, key=lambda h: h["select"])["epoch"]
    assert selected == top or (selected == best[-1]["epoch"] and
                               f"the last epoch's model (epoch {selected}) is kept" in log)


@pytest.mark.parametrize("setting, needle", [
    (['train.select="bset"'], "train.select must be one of 'last', 'best'"),
    (['train.select="best"', "train.val_fraction=0"], "train.val_fraction holds out none"),
    (['train.select="best"', "train.select_images=0"], "train.select_images"),
])
def test_select_errors(setting, needle, tmp_path, run_app):
    argv = [a for s in setting for a in ("--set", s)]
    code, out, err = run_app(APP, "train", "--preset", "smoke", *argv, "--out", str(tmp_path / "r"), "--no-test")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


@pytest.mark.parametrize("preset", ["smoke", "demo", "cpu"])
def test_every_preset_builds(preset):
    """Each shipped preset passes the config checks and builds its model; the cpu preset's map is the sum of the
    refined map and the scaled per-position Mahalanobis distance at a fixed weight 1, and scores images by itself."""
    import torch

    from apps.almrr.method import ALMRR
    from apps.common.config import check_config, load_config, presets
    from ssmad.scoring import PositionMahalanobis

    assert set(presets(APP.app_dir)) == {"smoke", "demo", "cpu"}
    config = load_config(APP.app_dir, preset, None, [])
    check_config(config)
    method = ALMRR(config, torch.device("cpu"))
    if preset == "cpu":
        assert isinstance(method.distance.metric, PositionMahalanobis) and not method.auto_weight
        assert (method.fusion, method.distance_weight, method.image_weight) == ("sum", 1.0, None)
