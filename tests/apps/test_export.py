"""Export (apps/common/export.py) and scoring with the exported file (apps/common/exported.py): the exported model
scores as the checkpoint does, in fp32 — maps within 1e-4 of their range, scores within 1e-5 relative, the same
decisions — for ONNX (onnxruntime), OpenVINO and torch.export, at batch sizes 1 and 7 and for images of mixed
sizes through ``predict``; what cannot be exported is one error line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from apps.almrr import APP as ALMRR_APP
from apps.common import Run
from apps.common.exported import ExportedModel
from apps.vmpfd import APP as VMPFD_APP

APPS = {"almrr": ALMRR_APP, "vmpfd": VMPFD_APP}


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Maps agree to 1e-4 of their range. (A smoke model's map can be nearly constant — ALMRR's refined map spans
    0.0018 around 0.54 — where float32 itself resolves only ~1e-4 of the range: a few ulps of the largest value
    are allowed too.)"""
    tol = max(1e-4 * float(b.max() - b.min()), 8 * np.finfo(np.float32).eps * float(np.abs(b).max()))
    assert float(np.abs(a - b).max()) <= tol, (float(np.abs(a - b).max()), tol)


@pytest.fixture(scope="module", params=sorted(APPS))
def exported(request, tmp_path_factory, run_app):
    app = APPS[request.param]
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    code, _, err = run_app(app, "train", "--preset", "smoke", "--no-test", "--out", str(root / "run"), "--device",
                           "cpu")
    assert code == 0, err
    code, out, err = run_app(app, "export", "--run", str(root / "run"), "--out", str(root / "model.onnx"))
    assert code == 0, err
    assert f"predict --model {root / 'model.onnx'}" in out
    return app, root


def _images(folder, sizes):
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        arr = (np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def test_the_sidecar_describes_the_model(exported):
    app, root = exported
    side = json.loads((root / "model.onnx.json").read_text())
    run = Run.open(root / "run")
    assert side["app"] == app.name and side["image_size"] == run.config["data"]["image_size"]
    assert side["thresholds"] == run.thresholds and side["precision"] == "fp32" and side["scan"] == "prefix"
    assert side["outputs"][:2] == ["anomaly_map", "score"] and side["outputs"][2:] == side["branches"]
    assert [c["role"] for c in side["components"]] == [e["role"] for e in run.config["pipeline"]]
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(root / "model.onnx")).metadata_props}
    assert json.loads(meta["ssmad"])["thresholds"] == run.thresholds


@pytest.mark.parametrize("batch", [1, 7])
def test_batches_score_as_the_checkpoint_in_fp32(exported, batch):
    app, root = exported
    method = Run.open(root / "run").method("cpu", "fp32")
    model = ExportedModel.open(root / "model.onnx")
    size = model.config["data"]["image_size"]
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = method.predict(images)
    got = model.predict_batch(images)
    _close(got.anomaly_map.numpy(), ref.anomaly_map.numpy())
    np.testing.assert_allclose(got.score.numpy(), ref.score.numpy(), rtol=1e-5)
    assert set(got.extras) == set(ref.extras)
    for name in ref.extras:
        _close(got.extras[name].numpy(), ref.extras[name].numpy())


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torch_export"])
def test_predict_with_the_model_writes_what_predict_with_the_run_writes(exported, tmp_path, run_app, fmt):
    pytest.importorskip({"onnx": "onnxruntime", "openvino": "openvino", "torch_export": "torch"}[fmt])
    app, root = exported
    model = root / "model.onnx"
    if fmt != "onnx":
        model = tmp_path / ("model.xml" if fmt == "openvino" else "model.pt2")
        code, _, err = run_app(app, "export", "--run", str(root / "run"), "--format", fmt, "--out", str(model))
        assert code == 0, err
    images = _images(tmp_path / "images", [(40, 56), (64, 64), (97, 31), (20, 20)])   # mixed sizes, one batch
    code, _, err = run_app(app, "predict", "--run", str(root / "run"), str(images), "--out", str(tmp_path / "a"),
                           "--save-maps", "--precision", "fp32", "--device", "cpu")
    assert code == 0, err
    code, _, err = run_app(app, "predict", "--model", str(model), str(images), "--out", str(tmp_path / "b"),
                           "--save-maps")
    assert code == 0, err
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    ra, rb = _read_csv(tmp_path / "a" / "predictions.csv"), _read_csv(tmp_path / "b" / "predictions.csv")
    assert [r["decision"] for r in ra] == [r["decision"] for r in rb] and all(r["decision"] for r in ra)
    for x, y in zip(ra, rb, strict=True):
        assert float(x["score"]) == pytest.approx(float(y["score"]), rel=1e-5)
    for f in files:
        if f.suffix == ".npy":
            _close(np.load(tmp_path / "b" / f), np.load(tmp_path / "a" / f))


def test_export_errors_are_one_line(exported, tmp_path, run_app, monkeypatch):
    app, root = exported
    # an unfinished run
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.pt").write_bytes((root / "run" / "checkpoint.pt").read_bytes())
    code, _, err = run_app(app, "export", "--run", str(unfinished), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and err.count("\n") == 1 and "only a finished run can be exported" in err
    # a file name that does not fit the format
    code, _, err = run_app(app, "export", "--run", str(root / "run"), "--out", str(tmp_path / "m.onx"))
    assert code == 2 and "a onnx file ends in .onnx" in err
    # a component that declares it cannot be exported: named by its role
    role, module = next(iter(Run.open(root / "run").method("cpu").modules.items()))
    monkeypatch.setattr(type(module), "exportable", False, raising=False)
    code, _, err = run_app(app, "export", "--run", str(root / "run"), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and f"pipeline.{role}: the component declares it cannot be exported" in err
    assert not (tmp_path / "m.onnx").exists()


def test_predict_model_errors_are_one_line(exported, tmp_path, run_app):
    app, root = exported
    other = VMPFD_APP if app is ALMRR_APP else ALMRR_APP
    images = _images(tmp_path / "images", [(32, 32)])
    code, _, err = run_app(other, "predict", "--model", str(root / "model.onnx"), str(images), "--out",
                           str(tmp_path / "o"))
    assert code == 2 and f"exported from apps.{app.name}, not apps.{other.name}" in err
    lone = tmp_path / "lone.onnx"
    lone.write_bytes((root / "model.onnx").read_bytes())
    code, _, err = run_app(app, "predict", "--model", str(lone), str(images), "--out", str(tmp_path / "p"))
    assert code == 2 and "its sidecar lone.onnx.json is missing" in err and err.count("\n") == 1


def test_the_standalone_scorer_needs_no_torch_and_scores_as_predict_model(exported, tmp_path, run_app):
    """scripts/predict_onnx.py, run where ``import torch`` fails, gives predict --model's scores, decisions and
    maps (mixed sizes, a grey and a 16-bit grey image, an unreadable file as its error row)."""
    import subprocess
    import sys
    from pathlib import Path

    app, root = exported
    images = _images(tmp_path / "images", [(40, 56), (97, 31), (20, 20)])
    rng = np.random.default_rng(7)
    Image.fromarray((rng.random((45, 45)) * 255).astype(np.uint8), "L").save(images / "grey.png")
    Image.fromarray((rng.random((33, 50)) * 65535).astype(np.uint16)).save(images / "deep.png")
    code, _, err = run_app(app, "predict", "--model", str(root / "model.onnx"), str(images), "--out",
                           str(tmp_path / "ref"), "--save-maps")
    assert code == 0, err
    (images / "broken.png").write_bytes(b"not a png")
    script = Path(__file__).resolve().parents[2] / "scripts" / "predict_onnx.py"
    blocker = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocker, str(script), str(root / "model.onnx"), str(images),
                           "--out", str(tmp_path / "lite"), "--save-maps", "--batch-size", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr    # the broken file is an error row, the rest scored
    ref = {Path(r["image"]).name: r for r in _read_csv(tmp_path / "ref" / "predictions.csv")}
    got = {Path(r["image"]).name: r for r in _read_csv(tmp_path / "lite" / "predictions.csv")}
    assert "cannot read image" in got.pop("broken.png")["error"] and set(got) == set(ref)
    for name, r in ref.items():
        assert got[name]["decision"] == r["decision"] and got[name]["threshold"] == r["threshold"]
        assert float(got[name]["score"]) == pytest.approx(float(r["score"]), rel=1e-5)
        stem = Path(name).stem
        _close(np.load(tmp_path / "lite" / "maps" / f"{stem}.npy"), np.load(tmp_path / "ref" / "maps" / f"{stem}.npy"))
