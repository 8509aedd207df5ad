"""What the diagnostic scripts of finished runs share (scripts/almrr_border.py, almrr_blend.py, padim_baseline.py,
vmpfd_branches.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ssmad.core import CheckpointError, SsmadError


def run_parser(doc: str, what: str, band: bool = True, data: bool = False) -> argparse.ArgumentParser:
    """``RUN [--band-px 16] [--device cpu]`` (``--band-px`` only with ``band``), with ``data`` also ``--data
    KIND:PATH [--category C] [--data-param KEY=VALUE]`` (the run's data where it is now, as ``test --data``; for
    :func:`open_run_data`), described by the first line of the script's ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("run", help=f"a finished {what} run folder (with model.pt)")
    if band:
        ap.add_argument("--band-px", type=int, default=16, help="border band in input pixels (default 16)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    if data:
        from .cli import add_data_flags

        add_data_flags(ap, "the run's dataset (KIND:PATH) where it is now, when it moved")
    return ap


def open_finished_run(app, run: str | Path, device: str, what: str) -> tuple[Any, dict[str, Any]]:
    """(method, checkpoint) of ``RUN/model.pt`` on ``device``; an SsmadError naming the problem otherwise (no
    model.pt, a checkpoint of another app, a bad device)."""
    from ssmad.core.device import resolve_device

    model = Path(run) / "model.pt"
    if not model.is_file():
        raise CheckpointError(f"{model} not found (a finished {what} run folder is needed)")
    return app.load_method(model, resolve_device(device))


def open_run_data(app, args: argparse.Namespace, what: str):
    """(method, config, data, train_idx, val_idx) of the finished run ``args.run`` (parsed by :func:`run_parser`
    with ``data``): its model on ``args.device``, its dataset (or the one ``--data`` names: the run's data where it
    is now), its test split checked against the run's as ``test`` does, and the split of its training images into
    those it trained on and those it held out; an SsmadError otherwise."""
    from .cli import data_choice
    from .data import split_validation
    from .evaluate import open_run_dataset

    method, ckpt = open_finished_run(app, args.run, args.device, what)
    config, data = open_run_dataset(Path(args.run), ckpt["config"], data_choice(args),
                                    "the same command with --data KIND:PATH")
    train_idx, val_idx = split_validation(data.train, float(config["train"]["val_fraction"]),
                                          int(config["train"]["seed"]))
    return method, config, data, train_idx, val_idx


def open_or_report(opener: Callable[..., Any], *args: Any) -> Any:
    """``opener(*args)`` (:func:`open_finished_run` or :func:`open_run_data`), or None after printing its error in one
    line (no model.pt, a checkpoint of another app, a bad --device, a dataset that moved): the script exits 2."""
    try:
        return opener(*args)
    except SsmadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def image_batches(samples: Sequence, size: int, device) -> Iterator[tuple[list, torch.Tensor]]:
    """``(chunk, images)`` over ``samples`` (a list or a dataset, read a chunk at a time): the chunk's samples and
    their images stacked on ``device``."""
    for start in range(0, len(samples), size):
        chunk = [samples[i] for i in range(start, min(start + size, len(samples)))]
        yield chunk, torch.stack([s.image for s in chunk]).to(device)
