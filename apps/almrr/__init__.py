"""ALMRR: Mamba feature reconstruction and refinement for anomaly localisation on textured surfaces.

    import apps.almrr as almrr
    run = almrr.train(data="folder:/my/images", data_params=["normal=good"], preset="cpu")   # an apps.common.Run
    predictions = run.predict(["new_images/"])

``train`` takes the command line's flags by name (:meth:`apps.common.app.App.train`); ``APP`` is the app itself;
``ALMRRModel`` its networks, ``fuse`` the rule that joins its two maps.
"""

from pathlib import Path

from ..common.app import App
from .fusion import FUSIONS, fuse
from .method import ALMRR
from .settings import AUTO_WEIGHTS
from .torch_model import ALMRRModel
from .weight_choice import synthetic_maps

APP = App("almrr", Path(__file__).parent, ALMRR,
          "ALMRR: Mamba feature reconstruction + refinement for anomaly localisation (Qu et al.)")
train = APP.train

__all__ = ["ALMRR", "APP", "AUTO_WEIGHTS", "FUSIONS", "ALMRRModel", "fuse", "synthetic_maps", "train"]
