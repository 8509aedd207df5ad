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
import warnings
from pathlib import Path
from typing import Any

import tomli_w
import torch

from ssmad.core import CheckpointError, ConfigError
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


CONFIG_FILE = "config.toml"
#: the files of a run folder written atomically (through a temporary ``.NAME.*.tmp`` beside them)
ATOMIC_FILES = ("checkpoint.pt", "model.pt", "best.pt", CONFIG_FILE, "split.json", "history.jsonl", "pdn.pt")


def write_config(run_dir: Path, config: dict[str, Any]) -> Path:
    """``RUN/config.toml``: the configuration a run trains with, for people to read (the checkpoints hold it too,
    and are what ``test``, ``predict`` and ``--resume`` use; :func:`config_edits` finds a hand edit)."""
    return atomic_write_text(run_dir / CONFIG_FILE, tomli_w.dumps(_plain(config)))


def config_edits(run_dir: Path, stored: dict[str, Any], app: str | None = None) -> dict[str, tuple[Any, Any]]:
    """The keys whose value in ``RUN/config.toml`` differs from the configuration ``stored`` in a checkpoint:
    ``{"pipeline.reconstructor.name": (stored value, file value)}``, a value ``None`` where one side lacks the key
    (pipeline entries are keyed by role), both as this release reads them (written by ``app``:
    :func:`~apps.common.migrate.upgrade_config`). Empty when the file is absent. A ConfigError naming the file when
    it is not valid TOML."""
    from ssmad.core.files import load_toml

    from .migrate import upgrade_config

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        edited = _flat(upgrade_config(load_toml(path), app))
    except ConfigError as exc:
        raise ConfigError(f"{exc} (it records the configuration of the run in {run_dir}; restore it, or delete it "
                          f"and train --resume writes it again from the checkpoint)") from None
    import tomllib

    kept = _flat(tomllib.loads(tomli_w.dumps(_plain(stored))))   # as written: None left out, tuples as lists
    return {k: (kept.get(k), edited.get(k)) for k in sorted(set(kept) | set(edited)) if kept.get(k) != edited.get(k)}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "pipeline" and not prefix and isinstance(value, list):
            for i, entry in enumerate(value):
                role = entry.get("role", str(i)) if isinstance(entry, dict) else str(i)
                out.update(_flat(entry, f"pipeline.{role}.") if isinstance(entry, dict) else
                           {f"pipeline.{role}": entry})
        elif isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_edits(edits: dict[str, tuple[Any, Any]], limit: int = 3) -> str:
    """``KEY is FILE in config.toml, STORED in the checkpoint; ...`` for the first ``limit`` edits."""
    def show(v: Any) -> str:
        return "absent" if v is None else repr(v)

    parts = [f"{k} is {show(new)} there, {show(old)} in the checkpoint" for k, (old, new) in
             list(edits.items())[:limit]]
    more = f" (and {len(edits) - limit} more)" if len(edits) > limit else ""
    return "; ".join(parts) + more


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Remove the temporary files (``.NAME.*.tmp`` of :data:`ATOMIC_FILES`) that a killed process left in
    ``run_dir``; return their names. Call only when no other process writes to the run."""
    removed = []
    for name in ATOMIC_FILES:
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp.name)
    return removed


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> Path:
    """``RUN/history.jsonl`` rewritten from a checkpoint's history (one JSON record per epoch), atomically."""
    import json

    return atomic_write_text(run_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))


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
        # torch warns about what it finds in a file it may then refuse (e.g. "Detected pickle protocol 4"): the
        # warnings are shown only for a file that loads, so a refusal is one error line
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
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
    for w in seen:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if app is not None and ckpt.get("app") != app:
        raise CheckpointError(f"{path}: this checkpoint is from apps.{ckpt.get('app')}, not apps.{app}")
    from .migrate import upgrade_checkpoint

    return upgrade_checkpoint(ckpt)


def log(run_dir: Path | None, line: str) -> None:
    """Print ``line`` and append it to ``RUN/train.log``; in a distributed training, rank 0 alone does (the others
    would print and write the same)."""
    from .distributed import is_main

    if not is_main():
        return
    print(line, flush=True)
    if run_dir is not None:
        with open(run_dir / "train.log", "a") as fh:
            fh.write(line + "\n")
