"""Shared fixtures of the backbone tests: backbones are built once per module (the ResNet-50s are big)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty torch.hub cache and a download function that fails as it would offline."""
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return calls
