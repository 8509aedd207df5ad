"""``python -m apps.vmpfd {train,test,predict,components}``."""

import sys
from pathlib import Path

from ..common.cli import App
from .method import VMPFD

APP = App("vmpfd", Path(__file__).parent, VMPFD,
          "VMPFD-AD: Vision-Mamba autoencoder + patch feature distribution (Liu and Zhuang)")

if __name__ == "__main__":
    sys.exit(APP.main())
