"""``python -m apps.vmpfd {train,test,predict,components}``."""

import sys

from . import APP

if __name__ == "__main__":
    sys.exit(APP.main())
