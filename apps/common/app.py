"""An app: one method (ALMRR, VMPFD-AD) with its pipeline.toml and presets, as a Python API and a command line.

    import apps.almrr as almrr
    run = almrr.train(data="demo", preset="smoke", out="runs/x")    # a Run (apps.common.run)

``python -m apps.<name> VERB`` (:mod:`apps.common.cli`) parses the flags into the same calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssmad.core import ConfigError


class App:
    """One app = a name, its folder (pipeline.toml, presets/), a Method class and a one-line description."""

    def __init__(self, name: str, app_dir: Path, method_cls, description: str):
        self.name, self.app_dir, self.method_cls, self.description = name, app_dir, method_cls, description

    def main(self, argv: list[str] | None = None) -> int:
        """The command line: ``train``, ``test``, ``predict``, ``components``; returns the exit code."""
        from .cli import main

        return main(self, argv)

    def train(self, data: str | None = None, *, category: str | Sequence[str] | None = None,
              data_params: Sequence[str] = (), preset: str | None = None, config: str | Path | None = None,
              overrides: Sequence[str] | Mapping[str, Any] = (), epochs: int | None = None,
              batch_size: int | None = None, image_size: int | None = None, seed: int | None = None,
              device: str = "auto", out: str | Path | None = None, resume: bool = False, test: bool = True,
              devices: int | None = None):
        """Train a run and return it (:class:`~apps.common.run.Run`), as ``python -m apps.NAME train`` does.

        ``data``: ``KIND:PATH`` (``mvtec:/data/mvtec``, ``folder:/my/images``, ``demo``), with ``category`` and
        ``data_params`` (``KEY=VALUE`` items, e.g. ``normal=good``); without it, the embedded demo data and the
        ``demo`` preset. ``preset``: ``smoke``, ``demo``, ``cpu`` or None (the paper configuration); ``config``: a
        TOML file merged over it; ``overrides``: ``KEY=VALUE`` items or a mapping (``{"train.lr": 1e-4}``);
        ``out``: the run folder (default ``runs/NAME/TIME-DATA``); ``resume``: continue the run in ``out``;
        ``test``: evaluate on the test split afterwards (the report goes to ``out/report``). Raises an
        :class:`ssmad.core.SsmadError` (ConfigError, DataError, CheckpointError, TrainingError) naming the
        problem.

        ``category="all"``, ``"carpet,grid"`` or a list trains one run per category under ``out`` and returns the
        :class:`~apps.common.benchmark.Benchmark` (its summary written; ``devices``: how many train at once)."""
        from .benchmark import wants_benchmark
        from .categories import train_categories
        from .training import DataChoice, TrainOptions, train

        sets = ([f"{k}={json.dumps(v)}" for k, v in overrides.items()] if isinstance(overrides, Mapping)
                else [str(o) for o in overrides])
        if isinstance(data_params, (str, bytes)):
            raise ConfigError(f"data_params: expected KEY=VALUE items, got the string {data_params!r}")
        opts = TrainOptions(DataChoice(data, category, tuple(data_params)), preset,
                            None if config is None else str(config), sets, epochs, batch_size, image_size, seed,
                            device, out, resume, test)
        if wants_benchmark(category, resume, out):
            return train_categories(self, opts, devices)
        return train(self, opts)

    def config(self, preset: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
        """The configuration ``train`` would use: pipeline.toml ← ``preset`` ← ``overrides`` (``KEY=VALUE``); a
        ConfigError naming a bad key or value."""
        from .config import load_config

        return load_config(self.app_dir, preset, None, [str(o) for o in overrides])

    def open(self, path: str | Path, verb: str = "test"):
        """The run at ``path`` (:meth:`apps.common.run.Run.open`), which must be this app's."""
        from .run import Run

        return Run.open(path, self, verb)

    def load_method(self, run: Path, device, verb: str = "test"):
        """(method in eval mode on ``device``, checkpoint) of a run folder or checkpoint file."""
        opened = self.open(run, verb)
        return opened.method(device), opened.checkpoint

    def components(self) -> list[dict[str, Any]]:
        """The default pipeline, one row per role: kind, name, parameters, enabled, and the alternatives."""
        from ssmad.core import components

        from .config import component, load_config

        config = load_config(self.app_dir, None, None, [])
        rows = []
        for entry in config["pipeline"]:
            alts = [c.name for c in components(entry["kind"]) if c.name != entry["name"]]
            alts = [a for a in alts if a in self.method_cls.alternatives.get(entry["role"], alts)]
            params = {k: v for k, v in entry.items() if k not in ("role", "kind", "name")}
            rows.append({"role": entry["role"], "kind": entry["kind"], "name": entry["name"], "params": params,
                         "enabled": component(config, entry["role"]) is not None, "alternatives": alts})
        return rows


def app_named(name: str) -> App:
    """The app ``apps.<name>`` (``almrr``, ``vmpfd``); a CheckpointError for a name no app has."""
    import importlib

    from ssmad.core import CheckpointError

    if not name.isidentifier():
        raise CheckpointError(f"the checkpoint names no app ({name!r})")
    try:
        module = importlib.import_module(f"apps.{name}")
    except ModuleNotFoundError:
        raise CheckpointError(f"the checkpoint is from apps.{name}, which is not installed") from None
    return module.APP
