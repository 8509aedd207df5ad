"""Run folders and checkpoints.

A run folder holds ``config.toml`` (the resolved configuration: the single source of truth),
``checkpoint.pt`` (last epoch, for ``--resume``), ``model.pt`` (the model used by ``test``/``predict``),
``train.log``, ``history.jsonl`` and, after ``test``, ``report/``. Checkpoints are one file of plain
containers and tensors, written atomically and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import pickle
from pathlib import Path
from typing import Any

import tomli_w
import torch

from ssmad.core import CheckpointError
from ssmad.core.files import atomic_write, atomic_write_text

FORMAT = "ssmad-checkpoint/1"
DISTRIBUTIONS = ("ssmad", "ssmad-core", "ssmad-ssm", "ssmad-backbones", "ssmad-synth", "ssmad-heads",
                 "ssmad-scoring", "ssmad-datasets", "torch")


def versions() -> dict[str, str]:
    out = {}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def new_run_dir(app: str, config: dict[str, Any], base: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = config["data"]
    label = str(data.get("spec", "data")).split(":", 1)[0]
    if data.get("category"):
        label += f"-{data['category']}"
    path = Path(base) / app / f"{stamp}-{label}"
    i = 1
    while path.exists():
        i += 1
        path = Path(base) / app / f"{stamp}-{label}-{i}"
    return path


def latest_run(app: str, base: str | Path = "runs") -> Path:
    root = Path(base) / app
    runs = sorted(p for p in root.glob("*") if (p / "checkpoint.pt").is_file()) if root.is_dir() else []
    if not runs:
        raise CheckpointError(f"--resume: no run with a checkpoint under {root}; pass --out RUN_DIR")
    return max(runs, key=lambda p: (p / "checkpoint.pt").stat().st_mtime)


def write_config(run_dir: Path, config: dict[str, Any]) -> Path:
    return atomic_write_text(run_dir / "config.toml", tomli_w.dumps(_plain(config)))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    payload = dict(payload, format=FORMAT, versions=versions())
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, app: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}" if path.suffix == ".pt" else
                              f"run folder not found: {path}")
    if path.is_dir():
        for name in ("model.pt", "checkpoint.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: no model.pt or checkpoint.pt in this run folder (did training finish?)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # not a torch file, or one holding objects (torch's advice would be to unpickle)
        raise CheckpointError(f"{path} is not a checkpoint written by ssmad") from None
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        why = str(exc).strip().split("\n")[0].split(". ")[0]  # the first sentence: torch appends advice
        raise CheckpointError(f"{path}: not a readable ssmad checkpoint, truncated or damaged "
                              f"({type(exc).__name__}: {why})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a checkpoint written by ssmad (format {found!r})")
    if app is not None and ckpt.get("app") != app:
        raise CheckpointError(f"{path}: this checkpoint is from apps.{ckpt.get('app')}, not apps.{app}")
    return ckpt
