"""Fixtures shared by all test folders."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# Triton's interpreter, which runs the `triton` scan backend's kernels on CPU tensors (tests/ssm/test_triton_scan.py),
# has to be chosen before triton is first imported, and importing torchvision imports it. Nothing else in the suite
# runs Triton kernels. TRITON_INTERPRET=0 on a CUDA machine tests the compiled kernels instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="session")
def load_script():
    """``load_script("name")``: the module of ``scripts/name.py`` (the scripts are not a package)."""

    def load(name: str):
        if str(SCRIPTS) not in sys.path:   # as when a script runs: its folder first, for _common and its siblings
            sys.path.insert(0, str(SCRIPTS))
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module   # dataclasses look their module up while the module runs
        spec.loader.exec_module(module)
        return module

    return load
