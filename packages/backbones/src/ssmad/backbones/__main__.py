"""Command line of ssmad-backbones.

    python -m ssmad.backbones distill --teacher efficientnet_lite0 --images DIR --out pdn.pth [--steps N]
    python -m ssmad.backbones layers            # selectable layers, channels and strides of each backbone
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ssmad.core import SsmadError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ssmad.backbones", description=__doc__.strip().splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="train a PDN to reproduce a pretrained backbone's patch features",
                       description="Distil EfficientAD's PDN from a registered pretrained backbone on a folder of "
                                   "images (see ssmad.backbones.distillation for the method).")
    d.add_argument("--teacher", required=True, help="registered backbone name (efficientnet_lite0, "
                                                     "wide_resnet50_2, resnet18, ...)")
    d.add_argument("--images", required=True, nargs="+", help="folder(s) of training images (searched "
                                                              "recursively), e.g. the training images and DTD")
    d.add_argument("--out", required=True, help="checkpoint file to write (loadable as pdn_small/pdn_medium "
                                                "weights)")
    d.add_argument("--layers", nargs="+", help="teacher layers (space or comma separated); default: the deepest "
                                               "stride-8 and stride-16 stages")
    d.add_argument("--teacher-weights", help="teacher weights: 'imagenet' (default) or a state-dict file")
    d.add_argument("--pdn", choices=("small", "medium"), help="PDN size (default small)")
    n = d.add_mutually_exclusive_group()
    n.add_argument("--steps", type=int, help="total optimisation steps (default 60000, as EfficientAD)")
    n.add_argument("--epochs", type=float, help="total passes over the images (instead of --steps)")
    d.add_argument("--batch-size", type=int, help="images per step (default 8)")
    d.add_argument("--image-size", type=int, help="PDN input size (default 256)")
    d.add_argument("--teacher-size", type=int, help="teacher input size (default 2 x image size)")
    d.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    d.add_argument("--weight-decay", type=float, help="Adam weight decay (default 1e-5)")
    d.add_argument("--grayscale-p", type=float, help="probability of a grayscale sample (default 0.1)")
    d.add_argument("--seed", type=int, help="seed of the projection, initialisation, data order (default 0)")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    d.add_argument("--workers", type=int, default=-1, help="data-loading processes (default: 0 on CPU, 4 on CUDA)")
    d.add_argument("--log-every", type=int, default=50, help="steps between progress lines (default 50)")
    d.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    d.add_argument("--resume", action="store_true", help="continue from the checkpoint at --out")
    d.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    d.add_argument("--cache-gib", type=float, default=4.0, help="keep the teacher's targets of every image in "
                   "memory when they fit in this many GiB (default 4; 0: compute them every step)")
    d.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="of the PDN's steps (default auto: bf16 on CUDA and on CPUs with bf16 units)")
    sub.add_parser("layers", help="list the selectable layers of the built-in backbones")
    return p


def _layers() -> int:
    from .efficientnet import LITE0_TABLE
    from .pdn import PDN_OUT_CHANNELS, PDN_STRIDE
    from .torchvision_backbones import STAGE_TABLES

    tables = {**STAGE_TABLES, "efficientnet_lite0": LITE0_TABLE}
    for name, table in tables.items():
        print(name)
        for layer, info in table.items():
            print(f"  {layer:<8} channels {info.channels:>5}  stride {info.stride:>3}")
    for size in ("small", "medium"):
        print(f"pdn_{size}\n  (output) channels {PDN_OUT_CHANNELS:>5}  stride {PDN_STRIDE:>3}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "distill":
            from .distillation import main_distill

            return main_distill(args)
        return _layers()
    except SsmadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted (the last periodic checkpoint is kept; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
