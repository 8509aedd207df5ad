"""Score images with an exported model (apps/common/export.py): onnxruntime for ``.onnx``, OpenVINO for ``.xml``,
``torch.export`` for ``.pt2``. :class:`ExportedModel` has the scoring interface of a run (``thresholds``,
``iter_predict``, ``predict``), so ``predict --model`` writes exactly what ``predict --run`` writes.

    from apps.common.exported import ExportedModel
    model = ExportedModel.open("model.onnx")
    for p in model.predict(["a.png", "folder/"]):
        print(p.path, p.score, p.anomalous)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssmad.core import AnomalyOutput, CheckpointError, ConfigError

from .export import FORMATS, SIDECAR_FORMAT, sidecar_path
from .predictor import Prediction, predict_in_batches


class ExportedModel:
    """An exported model file with its sidecar. ``meta``: the sidecar; ``config``: what scoring reads of a run's
    configuration (``data.image_size``); ``device``: the CPU (the runtimes here run on it)."""

    finished = True   # (exported from a finished run only)

    def __init__(self, path: Path, meta: dict[str, Any], threads: int | None = None) -> None:
        import torch

        self.path, self.meta = path, meta
        self.config = {"data": {"image_size": int(meta["image_size"])}}
        self.device = torch.device("cpu")
        self.app = str(meta.get("app", ""))
        self._run = _runner(path, meta["model_format"], threads)

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None) -> ExportedModel:
        """The exported model at ``path``; ``threads``: the runtime's threads (default its own choice). A
        CheckpointError when the file or its sidecar is missing or not an ssmad export; a ConfigError when the
        runtime it needs is not installed."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"--model {path}: no such file")
        side = sidecar_path(path)
        try:
            meta = json.loads(side.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"--model {path}: its sidecar {side.name} is missing (export writes both; keep "
                                  f"them together)") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"--model {path}: cannot read its sidecar {side}: {exc}") from None
        if (not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT
                or meta.get("model_format") not in FORMATS):
            raise CheckpointError(f"--model {path}: {side} is not the sidecar of an ssmad export")
        if path.suffix != FORMATS[meta["model_format"]]:
            raise CheckpointError(f"--model {path}: the sidecar describes a {meta['model_format']} file")
        return cls(path, meta, threads)

    # -- what a run also has ------------------------------------------------------------------------------------
    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.meta.get("thresholds") or {})

    @property
    def branches(self) -> list[str]:
        return list(self.meta.get("branches", []))

    def unfinished_note(self, verb: str) -> str | None:
        if verb == "predict" and not self.thresholds:
            return (f"{self.path} has no decision thresholds (its run held out no normal images): no image gets a "
                    f"decision unless --threshold is given, and no masks are written")
        return None

    # -- scoring --------------------------------------------------------------------------------------------------
    def run_arrays(self, images: np.ndarray) -> list[np.ndarray]:
        """The model's outputs (anomaly_map B×S×S, score B, branch maps) for float32 images B×3×S×S in [0, 1]."""
        size = self.config["data"]["image_size"]
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ConfigError(f"{self.path}: expects images B×3×{size}×{size}, got {tuple(images.shape)}")
        return [np.asarray(o) for o in self._run(np.ascontiguousarray(images, dtype=np.float32))]

    def predict_batch(self, images) -> AnomalyOutput:
        """``AnomalyOutput`` of a torch batch B×3×S×S, as a method's ``predict`` gives it (the same contract)."""
        import torch

        outs = self.run_arrays(images.detach().cpu().numpy())
        maps = torch.from_numpy(outs[0])[:, None]
        extras = {name: torch.from_numpy(o)[:, None] for name, o in zip(self.branches, outs[2:])}
        return AnomalyOutput(anomaly_map=maps, score=torch.from_numpy(outs[1]), extras=extras)

    def iter_predict(self, files: Sequence[str | Path], *, threshold: float | None = None, batch_size: int = 8,
                     branches: bool = False, **_: Any) -> Iterator[Prediction]:
        """As :meth:`apps.common.Run.iter_predict`, with the exported model."""
        threshold = self.thresholds.get("image") if threshold is None else threshold
        yield from predict_in_batches(_Scorer(self), files, threshold, batch_size, branches)

    def predict(self, inputs: Sequence[str | Path], *, threshold: float | None = None, batch_size: int = 8,
                branches: bool = False) -> list[Prediction]:
        """As :meth:`apps.common.Run.predict`: one Prediction per image of the files and folders ``inputs``."""
        from .predict_io import collect_images

        return list(self.iter_predict(collect_images([str(i) for i in inputs]), threshold=threshold,
                                      batch_size=batch_size, branches=branches))

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, app={self.app!r}, format={self.meta['model_format']!r})"


class _Scorer:
    """What :func:`apps.common.predictor.predict_files` calls: ``config``, ``device``, ``predict(batch)``."""

    def __init__(self, model: ExportedModel) -> None:
        self.config, self.device, self.predict = model.config, model.device, model.predict_batch


def _runner(path: Path, fmt: str, threads: int | None):
    """A function images (numpy B×3×S×S) → list of output arrays, for the file's runtime."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("scoring an .onnx model needs onnxruntime: pip install 'ssmad[export]'") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    if fmt == "openvino":
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError("scoring an OpenVINO model needs openvino: pip install openvino") from None
        core = ov.Core()
        # fp32 as exported (the CPU plugin would otherwise run bf16 where the CPU has bf16 units)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(str(path), "CPU", config)
        return lambda x: list(compiled(x).values())
    import torch

    module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [o.numpy() for o in module(torch.from_numpy(x))]

    return run
