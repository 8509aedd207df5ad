"""Export a finished run's whole scoring path into one file that runs without this code: ONNX (onnxruntime),
OpenVINO IR, or a ``torch.export`` program.

The exported graph is the method's ``predict`` traced in fp32 with every Mamba mixer on the log-depth ``prefix``
selective scan (plain tensor operations; the C++, Triton and mamba_ssm kernels do not trace): ImageNet
normalisation, the frozen backbone, the networks, every fitted statistic (distances, normalisations, quantiles) as
constants, the map post-processing and the image score.

- input ``images``: float32 B×3×S×S, RGB in [0, 1], S the run's ``data.image_size`` (resize each image to S×S,
  bilinear with antialiasing, as the run's datasets do; ``predict --model`` does that); any batch size;
- outputs: ``anomaly_map`` B×S×S, ``score`` B, then each branch map the method reports (ALMRR ``distance``;
  VMPFD-AD ``local``, ``global``) B×S×S.

Beside the file, ``FILE.json`` (also in the ONNX metadata, key ``ssmad``) holds the input size, the image and pixel
thresholds, the outputs, the pipeline components, the versions and the run it came from.

A component that cannot be exported says so with a class attribute ``exportable = False``: the export then stops
with one error naming its pipeline role.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ssmad.core import CheckpointError, ConfigError

if TYPE_CHECKING:
    from .run import Run

#: format → file suffix
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "torch_export": ".pt2"}
SIDECAR_FORMAT = "ssmad-export/1"
OPSET = 18


class InferenceGraph(nn.Module):
    """A method's scoring path as a module: ``forward(images)`` → ``(anomaly_map B×S×S, score B, *branch maps)``.
    The method's networks are its submodules; everything else (fitted statistics) enters a trace as constants."""

    def __init__(self, method: Any, branches: tuple[str, ...]) -> None:
        super().__init__()
        self.networks = method.modules
        self.branches = branches
        object.__setattr__(self, "_method", method)    # not a submodule: its networks are registered above

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._method.predict(images)
        return (out.anomaly_map[:, 0], out.score, *(out.extras[b][:, 0] for b in self.branches))


def blockers(method: Any) -> list[str]:
    """The pipeline roles whose component declares ``exportable = False`` (a network, or a scoring part)."""
    found = [f"pipeline.{role}" for role, module in method.modules.items()
             if any(getattr(m, "exportable", True) is False for m in module.modules())]
    for role, part in method.scoring_parts().items():
        if part is not None and getattr(part, "exportable", True) is False:
            found.append(f"pipeline.{role}")
    return found


@contextlib.contextmanager
def export_mode(method: Any) -> Iterator[None]:
    """Within: the method in eval mode and fp32, its Mamba mixers on the log-depth ``prefix`` scan (of the
    formulations in benchmarks/export_scan.py the fastest in onnxruntime and to export); all restored on exit."""
    from ssmad.ssm import BiMambaMixer
    from ssmad.ssm.chunked import selective_scan_prefix

    mixers = [m for m in method.modules.modules() if isinstance(m, BiMambaMixer)]
    saved = [m.scan for m in mixers], method.precision
    method.train(False)
    method.precision = "fp32"
    for m in mixers:
        m.scan = selective_scan_prefix
    try:
        yield
    finally:
        for m, scan in zip(mixers, saved[0]):
            m.scan = scan
        method.precision = saved[1]


def graph_of(method: Any) -> InferenceGraph:
    """The :class:`InferenceGraph` of a method (in :func:`export_mode`): its branch outputs are those its
    ``predict`` reports."""
    size = int(method.config["data"]["image_size"])
    with torch.no_grad():
        extras = method.predict(torch.rand(1, 3, size, size, device=method.device)).extras
    return InferenceGraph(method, tuple(sorted(extras)))


def _versions() -> dict[str, str]:
    from .runs import versions

    return {**versions(), "torch": torch.__version__}


def export_method(method: Any, out: str | Path, fmt: str = "onnx", *, meta: dict[str, Any] | None = None,
                  log=print) -> Path:
    """Export ``method`` (its statistics fitted) to ``out`` in ``fmt`` (one of :data:`FORMATS`) and write the
    sidecar ``out.json``; returns ``out``. ``meta``: what the sidecar also records (thresholds, run). A ConfigError
    for an unknown format, a component that cannot be exported, or a missing optional package."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    if found := blockers(method):
        raise ConfigError(f"{', '.join(found)}: the component declares it cannot be exported (exportable = False)")
    out = Path(out)
    if out.suffix != FORMATS[fmt]:
        raise ConfigError(f"--out {out}: a {fmt} file ends in {FORMATS[fmt]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    size = int(method.config["data"]["image_size"])
    start = time.perf_counter()
    with export_mode(method):
        graph = graph_of(method).eval()
        example = torch.rand(2, 3, size, size, device=method.device)
        names = ["anomaly_map", "score", *graph.branches]
        side = {
            "format": SIDECAR_FORMAT, "model_format": fmt, "file": out.name, "app": method.app,
            "image_size": size, "precision": "fp32", "scan": "prefix",
            "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, size, size],
                      "range": [0.0, 1.0], "resize": "each image to image_size x image_size, bilinear, antialiased"},
            "outputs": names, "branches": list(graph.branches),
            "components": [{k: e[k] for k in ("role", "kind", "name")} for e in method.config["pipeline"]],
            "versions": _versions(), **(meta or {}),
        }
        try:
            _write(graph, example, out, fmt, names, side)
        except (ConfigError, CheckpointError):
            raise
        except Exception as exc:   # a component that does not trace: one line, and what to do about it
            why = " ".join(str(exc).split())[:300]
            raise ConfigError(f"export to {fmt} failed while tracing the run's scoring path ({type(exc).__name__}: "
                              f"{why}); a component that cannot be traced should declare exportable = False") from None
    side["export_seconds"] = round(time.perf_counter() - start, 1)
    from ssmad.core.files import atomic_write_text

    atomic_write_text(sidecar_path(out), json.dumps(side, indent=2) + "\n")
    log(f"exported {method.app} to {out} ({fmt}, {side['export_seconds']:g} s); sidecar {sidecar_path(out)}")
    return out


def sidecar_path(model: Path) -> Path:
    return model.with_name(model.name + ".json")


def _onnx(graph: nn.Module, example: torch.Tensor, out: Path, names: list[str], side: dict[str, Any]) -> None:
    try:
        import onnx  # noqa: F401  (the exporter's own dependency: a clear message when it is missing)
    except ImportError:
        raise ConfigError("--format onnx needs the onnx package: pip install 'ssmad[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=["images"], output_names=names,
                                    dynamic_shapes={"images": {0: batch}}, opset_version=OPSET, verbose=False)
    program.model.metadata_props["ssmad"] = json.dumps(side)   # (set before the one save: a model can be large)
    program.save(str(out))


def _write(graph: nn.Module, example: torch.Tensor, out: Path, fmt: str, names: list[str],
           side: dict[str, Any]) -> None:
    if fmt == "onnx":
        _onnx(graph, example, out, names, side)
    elif fmt == "openvino":
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError("--format openvino needs the openvino package: pip install openvino") from None
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
            onnx_file = Path(tmp) / "model.onnx"
            _onnx(graph, example, onnx_file, names, side)
            # (fp32 weights: save_model would halve them to fp16 by default)
            ov.save_model(ov.convert_model(str(onnx_file)), str(out), compress_to_fp16=False)
    else:
        batch = torch.export.Dim("batch", min=1)
        with torch.no_grad():   # (the methods' own no_grad blocks would otherwise stay in the program as nodes)
            program = torch.export.export(graph, (example,), dynamic_shapes={"images": {0: batch}}, strict=False)
        torch.export.save(program, str(out), extra_files={"ssmad.json": json.dumps(side)})


def export_run(run: Run, out: str | Path, fmt: str = "onnx", log=print) -> Path:
    """Export a finished run (:meth:`apps.common.Run.export`); a CheckpointError for a run without model.pt."""
    if not run.finished:
        raise CheckpointError(f"{run.path}: only a finished run can be exported (it needs the statistics fitted "
                              f"after training); {run.finish_hint()}")
    method = run.method("cpu")
    return export_method(method, out, fmt, meta={"thresholds": run.thresholds, "run": str(run.path)}, log=log)
