"""VMPFD-AD: Vision-Mamba autoencoder + patch feature distribution with a mixture density network.

    import apps.vmpfd as vmpfd
    run = vmpfd.train(data="mvtec:/data/mvtec", category="bottle", device="cuda")   # an apps.common.Run
    predictions = run.predict(["new_images/"])

``train`` takes the command line's flags by name (:meth:`apps.common.app.App.train`); ``APP`` is the app itself.
"""

from pathlib import Path

from ..common.app import App
from .method import VMPFD

APP = App("vmpfd", Path(__file__).parent, VMPFD,
          "VMPFD-AD: Vision-Mamba autoencoder + patch feature distribution (Liu and Zhuang)")
train = APP.train

__all__ = ["APP", "train"]
