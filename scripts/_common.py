"""What the diagnostic scripts of finished runs share: their argument parser, opening a run through the Python
API (``apps.common.Run``) and held-out images with synthetic anomalies. Each script imports this as ``_common``
(scripts/ is first on ``sys.path`` when a script runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ssmad.core import CheckpointError, SsmadError


def run_parser(doc: str, what: str, band: bool = True, data: bool = False) -> argparse.ArgumentParser:
    """``RUN [--band-px 16] [--device cpu]`` (``--band-px`` only with ``band``), with ``data`` also ``--data
    KIND:PATH [--category C] [--data-param KEY=VALUE]`` (the run's data where it is now, as ``test --data``),
    described by the first line of the script's ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("run", help=f"a finished {what} run folder (with model.pt)")
    if band:
        ap.add_argument("--band-px", type=int, default=16, help="border band in input pixels (default 16)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    if data:
        ap.add_argument("--data", help="the run's dataset (KIND:PATH) where it is now, when it moved")
        ap.add_argument("--category", help="with --data: the dataset category (default the run's)")
        ap.add_argument("--data-param", action="append", default=[], metavar="KEY=VALUE",
                        help="with --data: a dataset option over the run's (repeatable)")
    return ap


def open_run(app, args: argparse.Namespace, what: str, with_data: bool = False) -> tuple[Any, ...] | None:
    """``(run, method)`` of the finished run ``args.run`` (its model.pt, the method on ``args.device``), with
    ``with_data`` also its :class:`apps.common.RunData` (``--data`` when given); None after printing the error in one
    line (no model.pt, another app's run, a bad --device, a dataset that moved): the script then exits 2."""
    try:
        if not (Path(args.run) / "model.pt").is_file():
            raise CheckpointError(f"{Path(args.run) / 'model.pt'} not found (a finished {what} run folder is needed)")
        run = app.open(Path(args.run) / "model.pt")
        method = run.method(args.device)
        if not with_data:
            return run, method
        return run, method, run.data(args.data, args.category, args.data_param)
    except SsmadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def with_synthetic_anomalies(held: list, seed: int, texture_dir: str | None = None):
    """``(images, labels, pixel)`` of the normal images ``held`` (3×H×W tensors in [0, 1]) followed by one Perlin
    anomaly of each (the ``perlin`` synthesiser with no clean draws, so each one is anomalous; ``texture_dir``
    None: scikit-image textures), drawn from ``numpy.random.default_rng(seed)``: images 2N×3×H×W, labels 2N (0
    normal, 1 anomalous), pixel 2N×H×W bool."""
    import numpy as np
    import torch

    from ssmad.core import build

    synth, rng = build("synth", "perlin", texture_dir=texture_dir, p_clean=0.0), np.random.default_rng(seed)
    anomalous, masks = [], []
    for img in held:
        _, bad, mask = synth(img.permute(1, 2, 0).numpy(), rng)
        anomalous.append(torch.from_numpy(np.ascontiguousarray(bad, np.float32)).permute(2, 0, 1))
        masks.append(np.asarray(mask, np.float32))
    labels = np.array([0] * len(held) + [1] * len(anomalous))
    pixel = np.concatenate([np.zeros((len(held), *masks[0].shape)), np.stack(masks)]) > 0.5
    return torch.stack(held + anomalous), labels, pixel
