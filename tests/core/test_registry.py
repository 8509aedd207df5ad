"""Registry: build/validate, unknown names with closest matches, overrides, real third-party entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Literal

import pytest

from ssmad.core import (
    ConfigError,
    Registry,
    UnknownComponentError,
    build,
    components,
    configclass,
    field,
    in_range,
    positive,
)
from ssmad.core.files import apply_overrides, atomic_write_text, parse_value


@configclass
class WidgetConfig:
    depth: int = field(default=8, validator=positive)
    rate: float = field(default=0.1, validator=in_range(0.0, 1.0))
    mode: Literal["fast", "slow"] = "fast"
    layers: tuple[str, ...] = ("a", "b")
    weights: str | None = None


class Widget:
    """A test widget."""

    def __init__(self, cfg: WidgetConfig):
        self.cfg = cfg


def make_registry() -> Registry:
    reg = Registry()
    reg._loaded = True  # no entry points: a private registry for unit tests
    reg.add("head", "widget", Widget, config=WidgetConfig, distribution="test", version="1")
    reg.add("head", "gadget", Widget, config=WidgetConfig, distribution="test", version="1")
    return reg


def test_build_validates_and_coerces():
    reg = make_registry()
    w = reg.build("head", "widget", depth=3, rate=1, layers=["x"], weights="w.pth")
    assert w.cfg.depth == 3 and w.cfg.rate == 1.0 and isinstance(w.cfg.rate, float)
    assert w.cfg.layers == ("x",)


@pytest.mark.parametrize("params, needle", [
    ({"dpeth": 3}, "unknown parameter 'dpeth'; allowed: depth"),
    ({"depth": 0}, "'depth' must be > 0"),
    ({"depth": "3"}, "'depth' must be an integer"),
    ({"depth": True}, "'depth' must be an integer"),
    ({"rate": 2.0}, "'rate' must be in [0.0, 1.0]"),
    ({"mode": "medium"}, "'mode' must be one of 'fast', 'slow'"),
    ({"layers": "a"}, "'layers' must be a list of a string"),
])
def test_bad_params_name_the_key(params, needle):
    with pytest.raises(ConfigError) as exc:
        make_registry().build("head", "widget", **params)
    assert "head 'widget'" in str(exc.value)
    assert needle in str(exc.value)


def test_unknown_name_and_kind_list_closest_first():
    reg = make_registry()
    with pytest.raises(UnknownComponentError) as exc:
        reg.build("head", "gadgte")
    assert str(exc.value).startswith("unknown head 'gadgte'; available: gadget")
    with pytest.raises(UnknownComponentError) as exc:
        reg.build("haed", "widget")
    assert "unknown component kind 'haed'; allowed: head" in str(exc.value)
    with pytest.raises(ConfigError):
        reg.add("thing", "x", Widget)


def test_later_registration_overrides_and_records_it():
    reg = make_registry()
    reg.add("head", "widget", lambda cfg: ("mine", cfg), config=WidgetConfig, distribution="other", version="2")
    out = reg.build("head", "widget")
    assert out[0] == "mine"
    info = reg.info("head", "widget")
    assert info.overrides == "test" and info.distribution == "other"


def test_builtin_components_listed():
    kinds = {c.kind for c in components()}
    assert {"scan", "mixer", "backbone", "synth", "reconstructor", "autoencoder", "head", "dataset", "score",
            "smooth", "normaliser", "fusion", "metric"} <= kinds
    names = {(c.kind, c.name) for c in components()}
    assert ("reconstructor", "vim") in names and ("backbone", "efficientnet_lite0") in names
    assert all(c.summary for c in components()), [c.name for c in components() if not c.summary]


def test_overrides_and_set_values():
    cfg = {"train": {"epochs": 3}, "pipeline": [{"role": "reconstructor", "kind": "reconstructor", "name": "vim"}]}
    out = apply_overrides(cfg, ["train.epochs=5", "pipeline.reconstructor.depth=4", "pipeline.0.name=cnn1x1"])
    assert out["train"]["epochs"] == 5 and out["pipeline"][0]["depth"] == 4 and out["pipeline"][0]["name"] == "cnn1x1"
    assert cfg["train"]["epochs"] == 3  # input untouched
    assert parse_value("1e-4") == 1e-4 and parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc"
    with pytest.raises(ConfigError, match="trian"):
        apply_overrides(cfg, ["trian.epochs=5"])
    with pytest.raises(ConfigError, match="no list entry 'refiner'"):
        apply_overrides(cfg, ["pipeline.refiner.depth=4"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(cfg, ["train.epochs"])


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")

    def boom(fh):
        fh.write("partial")
        raise RuntimeError("crash")

    from ssmad.core.files import atomic_write
    with pytest.raises(RuntimeError):
        atomic_write(p, boom, mode="w")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["x.txt"]


# -- a real third-party distribution with an entry point ------------------------------------------------------

PLUGIN_SRC = '''
from ssmad.core import configclass, hookimpl

@configclass
class Cfg:
    gain: float = 2.0

class Doubler:
    """Third-party synthesiser that overrides perlin."""
    def __init__(self, cfg):
        self.cfg = cfg

@hookimpl
def ssmad_register(register):
    register("synth", "perlin", Doubler, config=Cfg)
    register("synth", "stripes", Doubler, config=Cfg, summary="third-party stripes")
'''


def make_distribution(root) -> None:
    """A tiny installed distribution: a module plus its .dist-info with an ``ssmad`` entry point."""
    (root / "acme_ssmad_plugin.py").write_text(PLUGIN_SRC)
    info = root / "acme_ssmad-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ssmad\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text("[ssmad]\nacme = acme_ssmad_plugin\n")
    (info / "RECORD").write_text("")


def run_plugins(tmp_path, env_value: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SSMAD_PLUGINS", None)
    if env_value is not None:
        env["SSMAD_PLUGINS"] = env_value
    code = textwrap.dedent("""
        import json
        from ssmad.core import build, describe
        s = build("synth", "perlin")
        info = describe("synth", "perlin")
        print(json.dumps({"cls": type(s).__name__, "dist": info.distribution, "overrides": info.overrides}))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_third_party_entry_point_overrides_and_can_be_disabled(tmp_path):
    make_distribution(tmp_path)
    got = run_plugins(tmp_path, None)
    assert got == {"cls": "Doubler", "dist": "acme-ssmad", "overrides": "ssmad-synth"}
    assert run_plugins(tmp_path, "acme-ssmad")["cls"] == "Doubler"   # allow-listed by name
    assert run_plugins(tmp_path, "builtin")["dist"] == "ssmad-synth"  # third-party disabled
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    listing = subprocess.run([sys.executable, "-m", "ssmad.core", "plugins", "--json"], env=env,
                             capture_output=True, text=True, check=True)
    rows = json.loads(listing.stdout)["components"]
    assert {"kind": "synth", "name": "stripes", "distribution": "acme-ssmad", "version": "0.3.0"}.items() <= next(
        r for r in rows if r["name"] == "stripes").items()


def test_plugins_command_text():
    out = subprocess.run([sys.executable, "-m", "ssmad.core", "plugins", "--kind", "scan"], capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines()[0].split() == ["KIND", "NAME", "FROM", "SUMMARY"]
    assert "reference" in out and "ssmad-ssm" in out


def test_build_uses_global_registry():
    assert callable(build("scan", "reference"))


def test_path_fields_are_made_absolute_where_they_name_something(tmp_path, monkeypatch):
    """``path_field`` marks the parameters that name files; ``absolute_paths`` anchors them to the working directory
    (keywords, None, absolute paths, things that do not exist and other parameters are left as written)."""
    from ssmad.core import absolute_paths, configclass, path_field, registry

    @configclass
    class Cfg:
        weights: str | None = path_field(default="imagenet", keywords=("imagenet", "none"))
        folders: tuple[str, ...] = path_field(default=())
        label: str = "tex"

    (tmp_path / "tex").mkdir()
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "imagenet").mkdir()                  # a keyword stays a keyword even where such a folder exists
    monkeypatch.chdir(tmp_path)
    params = {"weights": "w.pt", "folders": ["tex", "missing", "/abs/x"], "label": "tex"}
    assert absolute_paths(Cfg, params) == {"weights": str(tmp_path / "w.pt"),
                                           "folders": [str(tmp_path / "tex"), "missing", "/abs/x"], "label": "tex"}
    assert absolute_paths(Cfg, {"weights": "ImageNet"}) == {"weights": "ImageNet"}
    assert absolute_paths(Cfg, {"weights": None}) == {"weights": None}
    assert absolute_paths(None, {"weights": "w.pt"}) == {"weights": "w.pt"}
    # the built-in components mark theirs: the synthesiser's textures, the backbones' weights files
    assert registry().absolute_paths("synth", "perlin", {"texture_dir": "tex", "p_clean": 0.5}) == {
        "texture_dir": str(tmp_path / "tex"), "p_clean": 0.5}
    assert registry().absolute_paths("backbone", "resnet18", {"weights": "w.pt"}) == {"weights": str(tmp_path / "w.pt")}
    assert registry().absolute_paths("backbone", "pdn_small", {"weights": "none"}) == {"weights": "none"}


def test_a_misspelt_plugin_allowlist_is_one_warning_each(tmp_path):
    """Each ``SSMAD_PLUGINS`` name that no installed distribution provides is one warning line (the built-in
    names and a real plugin are not); the components load as before."""
    make_distribution(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), SSMAD_PLUGINS="builtin,acme-ssmad,nonexistent-dist,other")
    proc = subprocess.run([sys.executable, "-m", "ssmad.core", "plugins", "--kind", "synth"], env=env,
                          capture_output=True, text=True, check=True)
    warned = proc.stderr.strip().splitlines()
    assert len(warned) == 2 and all(w.startswith("warning: SSMAD_PLUGINS names '") for w in warned), warned
    assert "'nonexistent-dist'" in warned[0] and "'other'" in warned[1]
    assert "stripes" in proc.stdout                                   # the allow-listed plugin still loads
    code = ("import warnings; from ssmad.core import PluginWarning, components\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); components()\n"
            "print(sum(issubclass(x.category, PluginWarning) for x in w))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
