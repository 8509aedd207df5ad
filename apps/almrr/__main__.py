"""``python -m apps.almrr {train,test,predict,components}``."""

import sys
from pathlib import Path

from ..common.cli import App
from .method import ALMRR

APP = App("almrr", Path(__file__).parent, ALMRR,
          "ALMRR: Mamba feature reconstruction + refinement for anomaly localisation (Qu et al.)")

if __name__ == "__main__":
    sys.exit(APP.main())
