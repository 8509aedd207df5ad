"""The app skeleton shared by both methods: the Python API (:class:`App`, :class:`Run`, :class:`Prediction`), the
command line built on it, config files, run folders, checkpoints, the training loop, inference, reports. A method
plugs in by subclassing :class:`apps.common.method.Method`."""

from .app import App
from .predictor import Prediction
from .run import Run

__all__ = ["App", "Prediction", "Run"]
