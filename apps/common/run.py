"""A trained run as a Python object: open it, score images, evaluate it.

    from apps.common import Run
    run = Run.open("runs/almrr/20261207-demo")      # any app's run: it knows its app
    for p in run.predict(["a.png", "folder/"]):     # Prediction(path, score, anomalous, anomaly_map, error, ...)
        print(p.path, p.score, p.anomalous)
    metrics = run.evaluate()                        # {"brick": {...}, "mean": {...}}, as ``test`` reports

``predict`` and ``test`` on the command line are this class and a printer.
"""

from __future__ import annotations

import contextlib
import shlex
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .predictor import Prediction, predict_in_batches
from .runs import load_checkpoint

if TYPE_CHECKING:
    from .app import App


@dataclass
class RunData:
    """The data of a run (:meth:`Run.data`): ``config`` (the run's, with the data where it is now), ``dataset``
    (``.train``, ``.test``: sample lists), and the indices of ``dataset.train`` it trained on (``train_idx``) and
    held out for its fits and thresholds (``val_idx``)."""

    config: dict[str, Any]
    dataset: Any
    train_idx: list[int]
    val_idx: list[int]

    @property
    def held_out(self) -> list:
        """The held-out normal training samples."""
        return [self.dataset.train[i] for i in self.val_idx]


class Run:
    """A run folder (or one of its checkpoint files) with the checkpoint it scores with: ``model.pt`` when training
    finished, else the last epoch's ``checkpoint.pt``.

    ``path``: the run folder; ``app``: its :class:`~apps.common.app.App`; ``checkpoint``: the loaded checkpoint
    (``config``, ``thresholds``, ...); ``finished``: whether it is a finished model (statistics fitted after
    training, decision thresholds)."""

    def __init__(self, path: Path, app: App, checkpoint: dict[str, Any], source: Path | None = None) -> None:
        self.path, self.app, self.checkpoint = Path(path), app, checkpoint
        self.source = source if source is not None else self.path
        self._methods: dict[str, Any] = {}

    @classmethod
    def open(cls, path: str | Path, app: App | None = None, verb: str = "test") -> Run:
        """The run at ``path`` (a run folder, or a checkpoint file in one). ``app``: the app it must belong to
        (default: whichever wrote it). A CheckpointError when there is no readable checkpoint (or it is another
        app's); a ConfigError when the run's config.toml was edited after training (``verb`` names the command
        in that message)."""
        from .app import app_named
        from .training import edited_settings

        path = Path(path)
        ckpt = load_checkpoint(path, app.name if app is not None else None)
        app = app if app is not None else app_named(str(ckpt.get("app")))
        run_dir = path if path.is_dir() else path.parent
        edited_settings(app.name, run_dir, ckpt["config"], verb)
        return cls(run_dir, app, ckpt, source=path)

    # -- what the run is --------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return self.checkpoint["config"]

    @property
    def thresholds(self) -> dict[str, float]:
        """``image``, ``pixel`` (and ``pixel_low``, ``quantile``) fitted on held-out normal images; empty for an
        unfinished run or one that held out none."""
        return dict(self.checkpoint.get("thresholds") or {})

    @property
    def finished(self) -> bool:
        return "thresholds" in self.checkpoint   # model.pt always holds them (empty without held-out images)

    def unfinished_note(self, verb: str) -> str | None:
        """One line for a run that cannot score as a finished one (an epoch checkpoint; for ``predict``, a finished
        one without thresholds) and how to finish it; None otherwise."""
        if self.finished:
            if verb == "predict" and not self.checkpoint.get("thresholds"):
                return (f"{self.path} has no decision thresholds (it held out no normal images when training): no "
                        f"image gets a decision unless --threshold is given, and no masks are written")
            return None
        done, epochs = self.checkpoint.get("epoch"), self.config.get("train", {}).get("epochs")
        if self.source.is_dir() or not (self.path / "model.pt").is_file():
            what = (f"{self.path} did not finish training (its checkpoint.pt holds epoch {done} of {epochs}, no "
                    f"model.pt)")
        else:
            what = f"{self.source} is the checkpoint of epoch {done} of {epochs}, not the finished model"
        means = ("its maps are not normalised" + (", and without decision thresholds no image gets a decision unless "
                 "--threshold is given (no masks are written)" if verb == "predict" else ""))
        return f"{what}: without the statistics fitted after training {means}; {self.finish_hint()}"

    def finish_hint(self) -> str:
        """How to get the finished model of this run."""
        if self.source.is_dir() or not (self.path / "model.pt").is_file():
            return f"finish it with: python -m apps.{self.app.name} train --resume --out {shlex.quote(str(self.path))}"
        return f"use --run {shlex.quote(str(self.path))} for its model.pt"

    # -- scoring ------------------------------------------------------------------------------------------------
    def method(self, device: Any = "auto", precision: str | None = None):
        """The run's method on ``device`` ("auto", "cpu", "cuda[:N]" or a torch.device), in eval mode (built once
        per device and precision). ``precision``: "auto", "fp32", "bf16" or "fp16" for its networks (default the
        run's ``train.precision``; an exported model computes in fp32). A ConfigError when a scan backend it names
        cannot run there, or for a precision the device lacks."""
        from ssmad.core.device import resolve_device, resolve_precision

        device = resolve_device(device) if isinstance(device, str) else device
        key = f"{device}/{precision}"
        if key not in self._methods:
            method = self.app.method_cls(self.config, device, for_training=False)
            method.scan_backends()    # a scan backend named for another device: one error before anything is scored
            method.load_state_dict(self.checkpoint["state"])
            method.train(False)
            if precision is not None:
                method.precision = resolve_precision(precision, device)
            self._methods[key] = method
        return self._methods[key]

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """A context in which an unfinished run's method does not warn about its unfitted statistics (its
        :meth:`unfinished_note` says so once)."""
        from .method import UnfittedWarning

        with warnings.catch_warnings():
            if not self.finished:
                warnings.simplefilter("ignore", UnfittedWarning)
            yield

    def iter_predict(self, files: Sequence[str | Path], *, threshold: float | None = None, device: Any = "auto",
                     batch_size: int = 8, branches: bool = False, precision: str | None = None
                     ) -> Iterator[Prediction]:
        """One :class:`~apps.common.predictor.Prediction` per image file, in order, scored ``batch_size`` at a time
        (a failing image is a Prediction with ``error``). ``threshold``: the image decision threshold (default the
        run's own); ``branches``: also each branch map alone; ``precision``: as for :meth:`method`."""
        method = self.method(device, precision)
        threshold = self.thresholds.get("image") if threshold is None else threshold
        with self.quiet():
            yield from predict_in_batches(method, files, threshold, batch_size, branches)

    def predict(self, inputs: Sequence[str | Path], *, threshold: float | None = None, device: Any = "auto",
                batch_size: int = 8, branches: bool = False, precision: str | None = None) -> list[Prediction]:
        """Score image files and folders (searched recursively, hidden files skipped): a list of
        :class:`~apps.common.predictor.Prediction`, one per image, ``anomaly_map`` float32 H×W at the image's own
        resolution, ``error`` None or why it has no result. A DataError when an input does not exist or a folder
        holds no images."""
        from .predict_io import collect_images

        return list(self.iter_predict(collect_images([str(i) for i in inputs]), threshold=threshold, device=device,
                                      batch_size=batch_size, branches=branches, precision=precision))

    def data(self, data: str | None = None, category: str | None = None,
             data_params: Sequence[str] = ()) -> RunData:
        """The run's dataset (or the one ``data`` ``KIND:PATH`` names, with ``category`` and ``data_params``: the
        run's data where it is now), its test split checked against the run's as ``test`` does, and the split of its
        training images; a DataError when the data is missing or its test split now holds training images."""
        from .data import split_validation
        from .evaluate import open_run_dataset
        from .training import DataChoice

        choice = DataChoice(data, category, tuple(data_params)).check()
        config, dataset = open_run_dataset(self.path, self.config, choice, "the same command with --data KIND:PATH")
        train_idx, val_idx = split_validation(dataset.train, float(config["train"]["val_fraction"]),
                                              int(config["train"]["seed"]))
        return RunData(config, dataset, train_idx, val_idx)

    def infer(self, samples, indices: Sequence[int] | None = None, *, device: Any = "auto",
              batch_size: int = 8, progress: str | None = None):
        """``(scores (N,), maps (N, H, W), branch maps {name: (N, H, W)}, info)`` of dataset samples (all, or
        ``indices``) at the model's input size, float32 numpy; ``info["masks"]`` the ground truth (N, H, W) bool,
        ``info["per_image_s"]`` the time. ``progress``: a label for progress lines on stderr."""
        from .inference import infer

        with self.quiet():
            return infer(self.method(device), samples, None if indices is None else list(indices), batch_size,
                         progress)

    def evaluate(self, *, out: str | Path | None = None, figures: int = 8, device: Any = "auto",
                 batch_size: int | None = None, data: str | None = None, category: str | None = None,
                 data_params: Sequence[str] = (), precision: str | None = None) -> dict[str, dict[str, float]]:
        """The metrics of the run on its test split (or on ``data`` ``KIND:PATH``, with ``category`` and
        ``data_params`` ``KEY=VALUE``), per category plus ``mean``, as ``test`` reports; with ``out`` the report
        (Markdown, JSON, figures) is written there too."""
        from .evaluate import evaluate_runs
        from .training import DataChoice

        choice = DataChoice(data, category, tuple(data_params)).check()
        return evaluate_runs(self.app, [self], None if out is None else Path(out), device, figures=figures,
                             batch_size=batch_size, data=choice, quiet=out is None, precision=precision)

    def export(self, out: str | Path, format: str = "onnx", log=print) -> Path:
        """Export the finished run's scoring path to ``out`` (``format``: "onnx", "openvino" or "torch_export"; see
        :mod:`apps.common.export`), with its sidecar ``out.json``; score it with
        :class:`apps.common.exported.ExportedModel` or ``predict --model``. A CheckpointError for an unfinished run,
        a ConfigError for a component that cannot be exported or a missing optional package."""
        from .export import export_run

        return export_run(self, out, format, log=log)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, app={self.app.name!r}, finished={self.finished})"
