"""ALMRR: Mamba feature reconstruction and refinement for anomaly localisation on textured surfaces.

    import apps.almrr as almrr
    run = almrr.train(data="folder:/my/images", data_params=["normal=good"], preset="cpu")   # an apps.common.Run
    predictions = run.predict(["new_images/"])

``train`` takes the command line's flags by name (:meth:`apps.common.app.App.train`); ``APP`` is the app itself.
"""

from pathlib import Path

from ..common.app import App
from .method import ALMRR

APP = App("almrr", Path(__file__).parent, ALMRR,
          "ALMRR: Mamba feature reconstruction + refinement for anomaly localisation (Qu et al.)")
train = APP.train

__all__ = ["APP", "train"]
