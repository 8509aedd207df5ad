"""Distil a PDN from a pretrained registered backbone on a folder of images (EfficientAD's teacher pretraining).

Target features, for each training image:

1. the teacher backbone (any registered ``backbone``, ImageNet weights by default) sees the image at
   ``teacher_size`` (default 2 × ``image_size``, as EfficientAD feeds WRN-50-2 512×512 images for a 256×256
   PDN); its ``layers`` (default: the deepest stride-8 and stride-16 stages, e.g. ``layer2`` + ``layer3`` of
   the ResNets, ``stage3`` + ``stage5`` of EfficientNet-Lite0) are resized bilinearly to the PDN's output grid
   and concatenated on channels (C channels);
2. C → 384 by a fixed random projection with orthonormal rows or columns (seeded, stored in the checkpoint).
   Chosen over EfficientAD's average-pooling of neighbouring channels, which mixes unrelated channels and cannot
   produce 384 distinct channels from fewer than 384 (EfficientNet-Lite0 gives 152): an orthonormal map keeps
   all the information when C ≤ 384 and is an unbiased, well-conditioned reduction when C > 384 (C = 384: none);
3. standardised per channel with the mean/std of the projected features over all training images (one pass
   before training; the same pass checks that every image can be read).

The PDN is trained in its padded form (256 → 64×64, aligned with a stride-8 teacher on 512×512 input, as in
EfficientAD's pretraining) with MSE loss, Adam (lr 1e-4, weight decay 1e-5), batch 8, random grayscale with
p = 0.1 applied to both views of an image; EfficientAD ran 60 000 steps (the default here). The checkpoint
(written atomically every ``save_every`` steps and at the end) holds the PDN, the target and output statistics,
the projection, metadata and the optimiser state; ``resume`` continues from it. Data order and augmentation are
functions of (seed, step), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmad.core import CheckpointError, ConfigError, DataError, TrainingError, build, fmt_time
from ssmad.core.device import resolve_device
from ssmad.core.files import atomic_write
from ssmad.datasets.io import list_images, load_image, resize_image

from .base import concat_stages
from .pdn import PDN, PDN_FORMAT, PDN_OUT_CHANNELS, pdn_checkpoint, pdn_output_size
from .stages import LITE0_TABLE, STAGE_TABLES

DEFAULT_STEPS = 60_000
_DEFAULTS: dict[str, Any] = {"pdn": "small", "image_size": 256, "batch_size": 8, "lr": 1e-4,
                             "weight_decay": 1e-5, "seed": 0, "grayscale_p": 0.1}
# settings that define what the network learns: a resumed run must not change them
_STRUCTURAL = ("teacher", "teacher_weights", "layers", "pdn", "image_size", "teacher_size")


# ---- images --------------------------------------------------------------------------------------------------

def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as float32 3×H×W in [0, 1], decoded as the datasets decode it (EXIF orientation applied,
    grayscale replicated, alpha dropped, 16-bit scaled); :class:`DataError` naming the file otherwise."""
    return torch.from_numpy(load_image(path)).permute(2, 0, 1).contiguous()


class _ImagePairs(torch.utils.data.Dataset):
    """Each image (a file, or a 3×H×W tensor in [0, 1]) at the PDN size and at the teacher size."""

    def __init__(self, items: Sequence[Path | Tensor], size: int, teacher_size: int) -> None:
        self.items, self.size, self.teacher_size = list(items), size, teacher_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        item = self.items[i]
        img = item.permute(1, 2, 0).numpy() if isinstance(item, Tensor) else load_image(item)
        return resize_image(img, self.size), resize_image(img, self.teacher_size)


class _StepBatches:
    """Batch indices for steps ``start``..``total-1``: sample ``k`` of the run is ``perm(k // n)[k % n]``."""

    def __init__(self, n: int, batch: int, start: int, total: int, seed: int) -> None:
        self.n, self.batch, self.start, self.total, self.seed = n, batch, start, total, seed
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            first = step * self.batch
            yield [int(self._perm(k // self.n)[k % self.n]) for k in range(first, first + self.batch)]


def _grayscale(x: Tensor, flags: Tensor) -> Tensor:
    if not bool(flags.any()):
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    gray = (x * w).sum(1, keepdim=True).expand_as(x)
    return torch.where(flags.view(-1, 1, 1, 1).to(x.device), gray, x)


# ---- targets -------------------------------------------------------------------------------------------------

def default_teacher_layers(teacher: str) -> tuple[str, ...] | None:
    """The deepest stride-8 and stride-16 stages of a built-in backbone (None: use the component's default)."""
    table = STAGE_TABLES.get(teacher) or (LITE0_TABLE if teacher == "efficientnet_lite0" else None)
    if table is None:
        return None
    picked = []
    for stride in (8, 16):
        names = [n for n, info in table.items() if info.stride == stride]
        if names:
            picked.append(names[-1])
    return tuple(picked) or None


def make_projection(in_channels: int, out_channels: int = PDN_OUT_CHANNELS, seed: int = 0) -> Tensor:
    """out×in matrix with orthonormal rows (in ≥ out) or columns (in < out); the identity when in == out."""
    if in_channels == out_channels:
        return torch.eye(out_channels)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(max(in_channels, out_channels), min(in_channels, out_channels), generator=g,
                    dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique QR: a fixed sign convention
    m = q.T if in_channels > out_channels else q  # out×in either way
    return m.float().contiguous()


def teacher_features(teacher: nn.Module, images: Tensor, grid: int, projection: Tensor) -> Tensor:
    """Projected teacher features B×384×grid×grid (before standardisation)."""
    f = concat_stages(teacher(images), grid)
    return torch.einsum("oc,bchw->bohw", projection.to(f.device, f.dtype), f)


def _channel_stats(batches: Iterator[Tensor]) -> tuple[Tensor, Tensor]:
    total = sq = None
    count = 0
    for y in batches:
        y64 = y.double()
        s, s2 = y64.sum((0, 2, 3)), (y64 * y64).sum((0, 2, 3))
        total = s if total is None else total + s
        sq = s2 if sq is None else sq + s2
        count += y.shape[0] * y.shape[2] * y.shape[3]
    assert total is not None and sq is not None
    mean = total / count
    var = (sq / count - mean * mean).clamp_min(0)
    return mean.float().cpu(), var.sqrt().clamp_min(1e-6).float().cpu()


# ---- settings and checkpoint -----------------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class DistillSettings:
    """Arguments of :func:`distill`. ``None`` means: the checkpoint's value on resume, else the default."""

    teacher: str
    images: str | Sequence[str]   # one folder or several (each searched recursively)
    out: str
    layers: tuple[str, ...] | None = None
    teacher_weights: str | None = None  # None: the component's default ("imagenet")
    pdn: str | None = None  # "small" | "medium"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    teacher_size: int | None = None  # None: 2 × image_size
    lr: float | None = None
    weight_decay: float | None = None
    grayscale_p: float | None = None
    seed: int | None = None
    device: str = "auto"
    workers: int = -1  # -1: 0 on CPU, min(4, cpus) on CUDA
    log_every: int = 50
    save_every: int = 1000
    resume: bool = False
    overwrite: bool = False
    cache_gib: float = 4.0   # the teacher's targets are computed once and kept when they fit in this many GiB
    precision: str = "auto"  # of the PDN's steps: "auto" (bf16 on CUDA and on CPUs with bf16 units), "fp32", "bf16"


def _check_positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is not None and not (value >= 0 if allow_zero else value > 0):
        raise ConfigError(f"--{name.replace('_', '-')} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _resolve(s: DistillSettings, saved: dict[str, Any] | None) -> dict[str, Any]:
    """Effective settings: given values, else the checkpoint's, else the defaults; structural ones checked."""
    for name in ("steps", "epochs", "batch_size", "image_size", "teacher_size", "lr", "log_every", "save_every"):
        _check_positive(name, getattr(s, name))
    _check_positive("weight_decay", s.weight_decay, allow_zero=True)
    if s.grayscale_p is not None and not 0 <= s.grayscale_p <= 1:
        raise ConfigError(f"--grayscale-p must be in [0, 1], got {s.grayscale_p}")
    if s.steps is not None and s.epochs is not None:
        raise ConfigError("give --steps or --epochs, not both")
    if s.pdn is not None and s.pdn not in ("small", "medium"):
        raise ConfigError(f"--pdn must be small or medium, got {s.pdn!r}")
    saved = saved or {}
    eff: dict[str, Any] = {}
    for name in ("teacher", "teacher_weights", "layers", "pdn", "image_size", "teacher_size", "batch_size", "lr",
                 "weight_decay", "grayscale_p", "seed"):
        given = getattr(s, name)
        if name in saved:
            old = saved[name]
            if isinstance(old, list):
                old = tuple(old)
            if given is not None and name in _STRUCTURAL and given != old:
                raise ConfigError(f"--{name.replace('_', '-')} {given!r} differs from {old!r} in the checkpoint "
                                  f"{s.out}; start a new output file instead of --resume")
            eff[name] = old if given is None else given
        else:
            eff[name] = given if given is not None else _DEFAULTS.get(name)
    if eff["layers"] is None:
        eff["layers"] = default_teacher_layers(eff["teacher"])
    if eff["teacher_size"] is None:
        eff["teacher_size"] = 2 * eff["image_size"]
    for name in ("image_size", "teacher_size"):
        if eff[name] < 16:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 16, got {eff[name]}")
    return eff


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot resume from {path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != PDN_FORMAT or "train" not in obj:
        raise CheckpointError(f"cannot resume from {path}: not a distillation checkpoint of ssmad.backbones")
    return obj


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


# ---- the run -------------------------------------------------------------------------------------------------

def _print(msg: str) -> None:
    print(msg, flush=True)


def distill(s: DistillSettings, log: Callable[[str], None] | None = None,
            images: Sequence[Tensor] | None = None) -> dict[str, Any]:
    """Train a PDN to reproduce a teacher backbone's standardised patch features; returns a summary dict
    (``out``, ``steps``, ``final_loss``, ``history``). The training images are those under the folder
    ``s.images`` (recursively), or ``images``: 3×H×W float tensors in [0, 1] already in memory (``s.images`` then
    only names them in the log and the checkpoint). Errors a user can cause raise :class:`SsmadError`."""
    log = log or _print
    out = Path(s.out).expanduser()
    if images is not None:
        if len(images) == 0:
            raise DataError(f"no images to distil on ({s.images or 'an empty list'})")
        files: list[Path | Tensor] = list(images)
    else:
        folders = [s.images] if isinstance(s.images, str | os.PathLike) else list(s.images)
        if not folders:
            raise ConfigError("--images: give at least one folder")
        files = [f for folder in folders for f in list_images(Path(folder).expanduser(), recursive=True)]
    ckpt = None
    if out.exists():
        if s.resume:
            ckpt = _read_checkpoint(out)
        elif not s.overwrite:
            raise ConfigError(f"output file {out} exists; pass --resume to continue it or --overwrite to replace it")
    elif s.resume:
        log(f"no checkpoint at {out} yet: starting a new run")
    saved_meta = dict(ckpt["meta"]) if ckpt is not None else None
    eff = _resolve(s, saved_meta)
    n = len(files)
    batch = eff["batch_size"]
    if s.steps is not None:
        total = s.steps
    elif s.epochs is not None:
        total = math.ceil(s.epochs * n / batch)
    elif saved_meta is not None:
        total = int(saved_meta.get("steps", DEFAULT_STEPS))
    else:
        total = DEFAULT_STEPS
    device = resolve_device(s.device)
    workers = s.workers if s.workers >= 0 else (0 if device.type == "cpu" else min(4, os.cpu_count() or 1))

    params: dict[str, Any] = {}
    if eff["layers"] is not None:
        params["layers"] = list(eff["layers"])
    if eff["teacher_weights"] is not None:
        params["weights"] = eff["teacher_weights"]
    teacher = build("backbone", eff["teacher"], **params)
    if not hasattr(teacher, "channels"):
        raise ConfigError(f"--teacher {eff['teacher']!r}: not a feature backbone (it has no 'channels')")
    teacher = teacher.to(device).eval()
    eff["layers"] = tuple(getattr(teacher, "layers", eff["layers"] or ()))
    in_channels = int(sum(teacher.channels))
    grid = pdn_output_size(eff["image_size"], padding=True)
    seed = int(eff["seed"])
    log(f"distil pdn_{eff['pdn']} from {eff['teacher']} {list(eff['layers'])} ({in_channels} channels -> "
        f"{PDN_OUT_CHANNELS}) on {n} images of {_named(s.images)}: image {eff['image_size']}, teacher "
        f"{eff['teacher_size']}, grid {grid}x{grid}, {total} steps of batch {batch}, device {device}")

    data = _ImagePairs(files, eff["image_size"], eff["teacher_size"])
    # the teacher's projected targets of each image (its colour view), kept once computed: a step then runs the PDN
    # alone (grayscale views, a tenth of them by default, still go through the teacher). In fp32: a rounding to
    # fp16 would turn the teacher's last-bit differences between thread counts into visible ones
    cache_bytes = n * PDN_OUT_CHANNELS * grid * grid * 4
    cache: dict[int, Tensor] | None = {} if cache_bytes <= s.cache_gib * 2**30 else None
    log(f"teacher targets: {'cached' if cache is not None else 'computed every step'} "
        f"({cache_bytes / 2**30:.2f} GiB for all images; cache limit {s.cache_gib:g} GiB)")
    from ssmad.core.device import autocast, resolve_precision

    if s.precision == "fp16":
        raise ConfigError("--precision fp16: distillation runs in fp32 or bf16 (fp16 would need loss scaling)")
    precision = resolve_precision(s.precision, device)
    if ckpt is not None:
        projection = ckpt["projection"].float()
        if tuple(projection.shape) != (PDN_OUT_CHANNELS, in_channels):
            raise CheckpointError(f"cannot resume from {out}: its projection is {tuple(projection.shape)}, the "
                                  f"teacher gives {in_channels} channels")
        t_mean, t_std = ckpt["target_mean"].float(), ckpt["target_std"].float()
    else:
        projection = make_projection(in_channels, PDN_OUT_CHANNELS, seed)
        log(f"target statistics over {n} images ...")
        t0 = time.monotonic()

        def projected() -> Iterator[Tensor]:
            for i in range(0, n, batch):
                big = torch.stack([data[j][1] for j in range(i, min(n, i + batch))]).to(device)
                with torch.no_grad():
                    y = teacher_features(teacher, big, grid, projection)
                if cache is not None:
                    cache.update({i + k: f.float().cpu() for k, f in enumerate(y)})
                yield y

        t_mean, t_std = _channel_stats(projected())
        log(f"target statistics done in {time.monotonic() - t0:.1f} s")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pdn = PDN(eff["pdn"], padding=True, normalize=True, frozen=False)
    pdn.target_mean.copy_(t_mean)
    pdn.target_std.copy_(t_std)
    start = 0
    history: list[list[float]] = []
    if ckpt is not None:
        try:
            pdn.load_state_dict({**ckpt["state_dict"], **{k: ckpt[k] for k in
                                                          ("target_mean", "target_std", "output_mean",
                                                           "output_std")}})
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"cannot resume from {out}: PDN weights do not fit ({exc})") from None
        start = int(ckpt["train"]["step"])
        history = [list(h) for h in ckpt["train"].get("history", [])]
    pdn = pdn.to(device)
    opt = torch.optim.Adam(pdn.parameters(), lr=eff["lr"], weight_decay=eff["weight_decay"])
    if ckpt is not None and ckpt["train"].get("optimizer"):
        opt.load_state_dict(ckpt["train"]["optimizer"])
        for group in opt.param_groups:
            group["lr"], group["weight_decay"] = eff["lr"], eff["weight_decay"]

    meta = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in eff.items()},
        "steps": total, "grid": grid, "teacher_channels": list(teacher.channels), "in_channels": in_channels,
        "projection": "identity" if in_channels == PDN_OUT_CHANNELS else "orthonormal", "images": _named(s.images),
        "n_images": n, "torch": str(torch.__version__), "ssmad_backbones": _version("ssmad-backbones"),
    }

    def save(step: int, complete: bool, final_pdn: PDN | None = None) -> None:
        src = final_pdn if final_pdn is not None else pdn
        obj = pdn_checkpoint(src, meta, projection=projection.cpu(), train={
            "step": step, "complete": complete, "history": history, "optimizer": opt.state_dict()})
        atomic_write(out, lambda fh: torch.save(obj, fh))

    if start < total:
        log(f"training from step {start} to {total}")
    batches = _StepBatches(n, batch, start, total, seed)
    loader = torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=workers)
    t_start, run_loss, run_count, step = time.monotonic(), 0.0, 0, start
    grayscale_p = float(eff["grayscale_p"])
    mean_d, std_d = t_mean.to(device).view(1, -1, 1, 1), t_std.to(device).view(1, -1, 1, 1)
    for (small, big), idx in zip(loader, iter(batches)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7 * step + 1)
        flags = torch.rand(small.shape[0], generator=g) < grayscale_p
        small, big = _grayscale(small.to(device), flags), _grayscale(big.to(device), flags)
        raw = _targets(teacher, big, grid, projection, idx, flags, cache)
        target = (raw - mean_d) / std_d
        with autocast(device, precision):
            pred = pdn(small)[0]
        loss = F.mse_loss(pred.float(), target)
        if not torch.isfinite(loss):
            raise TrainingError(f"distillation loss became {loss.item()} at step {step + 1}; lower --lr "
                                f"(now {eff['lr']}); periodic checkpoints (if any) are in {out}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run_loss += loss.item()
        run_count += 1
        if step % s.log_every == 0 or step == total:
            avg = run_loss / run_count
            history.append([step, avg])
            rate = (step - start) / max(time.monotonic() - t_start, 1e-9)
            log(f"step {step}/{total}  loss {avg:.4f}  {rate:.2f} step/s  ETA {fmt_time((total - step) / rate)}")
            run_loss, run_count = 0.0, 0
        if step % s.save_every == 0 and step < total:
            save(step, complete=False)

    # EfficientAD's teacher normalisation: channel statistics of the finished PDN's outputs, unpadded as it is
    # used (padded only for images below the unpadded PDN's 33-pixel receptive field)
    stats_padding = pdn_output_size(eff["image_size"], padding=False) < 1
    meta["output_stats_padding"] = stats_padding
    final = PDN(eff["pdn"], padding=stats_padding, normalize=True, frozen=True)
    final.load_state_dict(pdn.state_dict())
    final = final.to(device)
    log(f"output statistics over {n} images ...")

    def outputs() -> Iterator[Tensor]:
        for i in range(0, n, batch):
            small = torch.stack([data[j][0] for j in range(i, min(n, i + batch))]).to(device)
            with torch.no_grad():
                yield final(small)[0]

    o_mean, o_std = _channel_stats(outputs())
    final.set_output_stats(o_mean, o_std)
    save(step, complete=True, final_pdn=final)
    final_loss = history[-1][1] if history else float("nan")
    log(f"wrote {out} (step {step}, loss {final_loss:.4f})")
    return {"out": str(out), "steps": step, "final_loss": final_loss, "history": history}


def _named(images: str | Sequence[str]) -> str:
    return str(images) if isinstance(images, str | os.PathLike) else ", ".join(str(i) for i in images)


def _targets(teacher: nn.Module, big: Tensor, grid: int, projection: Tensor, idx: list[int], gray: Tensor,
             cache: dict[int, Tensor] | None) -> Tensor:
    """The projected teacher targets of a batch (before standardisation): from ``cache`` for colour views already
    seen, through the teacher for the rest (colour views then cached)."""
    need = [k for k, i in enumerate(idx) if cache is None or bool(gray[k]) or i not in cache]
    if need:
        with torch.no_grad():
            fresh = teacher_features(teacher, big[need], grid, projection).float()
        if cache is not None:
            cache.update({idx[k]: f.cpu() for k, f in zip(need, fresh) if not bool(gray[k])})
        if len(need) == len(idx):
            return fresh
    computed = dict(zip(need, fresh)) if need else {}
    return torch.stack([computed[k] if k in computed else cache[i].to(big.device)
                        for k, i in enumerate(idx)])


def main_distill(args: Any) -> int:
    """Entry for ``python -m ssmad.backbones distill`` (args from argparse)."""
    layers = None
    if args.layers:
        layers = tuple(p for item in args.layers for p in item.split(",") if p)
    settings = DistillSettings(
        teacher=args.teacher, images=args.images, out=args.out, layers=layers, teacher_weights=args.teacher_weights,
        pdn=args.pdn, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
        teacher_size=args.teacher_size, lr=args.lr, weight_decay=args.weight_decay, grayscale_p=args.grayscale_p,
        seed=args.seed, device=args.device, workers=args.workers, log_every=args.log_every,
        save_every=args.save_every, resume=args.resume, overwrite=args.overwrite, cache_gib=args.cache_gib,
        precision=args.precision)
    distill(settings, log=_print)
    return 0
