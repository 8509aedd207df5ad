"""Each package's ``__version__`` is the version in its pyproject.toml (ssmad-ssm's said 0.3.1 for two releases)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

PACKAGES = sorted((Path(__file__).resolve().parents[2] / "packages").glob("*/pyproject.toml"))


@pytest.mark.parametrize("pyproject", PACKAGES, ids=lambda p: p.parent.name)
def test_version_attribute_matches_pyproject(pyproject):
    version = tomllib.loads(pyproject.read_text())["project"]["version"]
    module = importlib.import_module(f"ssmad.{pyproject.parent.name}")
    assert module.__version__ == version


def test_every_package_is_checked():
    assert len(PACKAGES) == 7
