"""The app skeleton shared by both methods: the Python API (:class:`App`, :class:`Run`, :class:`Prediction`), the
command line built on it, config files, run folders, checkpoints, the training loop, inference, reports. A method
plugs in by subclassing :class:`apps.common.method.Method`."""

from .app import App
from .benchmark import Benchmark
from .data import image_batches, split_validation
from .evaluate import by_defect_type
from .predictor import Prediction
from .run import Run, RunData

__all__ = ["App", "Benchmark", "Prediction", "Run", "RunData", "by_defect_type", "image_batches", "split_validation"]
