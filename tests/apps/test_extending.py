"""docs/extending.md's plugin example, as written, registers a component that an app trains with."""

from __future__ import annotations

import re
import types
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def test_the_documented_plugin_trains(tmp_path, run_app):
    from apps.almrr import APP
    from ssmad.core import registry, reset_registry

    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    module = types.ModuleType("my_package_ssmad_plugin")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    try:
        registry().add_plugin(module, "my-package", "0.1")
        code, out, err = run_app(APP, "train", "--preset", "smoke", "--set", "pipeline.synth.name=stripes", "--set",
                                 "pipeline.synth.width=4", "--out", str(tmp_path / "run"), "--no-test", "--device",
                                 "cpu")
        assert code == 0, err
        assert 'name = "stripes"' in (tmp_path / "run" / "config.toml").read_text()
        assert "width = 4" in (tmp_path / "run" / "config.toml").read_text()
    finally:
        reset_registry()
