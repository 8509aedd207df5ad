"""The command line shared by both apps: ``train``, ``test``, ``predict``, ``components``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssmad.core import CheckpointError, ConfigError, DataError, SsmadError, components

from .config import component, load_config, presets
from .runs import latest_run, load_checkpoint, new_run_dir, write_config

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class App:
    """One app = a name, its folder (pipeline.toml, presets/), a Method class and a one-line description."""

    def __init__(self, name: str, app_dir: Path, method_cls, description: str):
        self.name, self.app_dir, self.method_cls, self.description = name, app_dir, method_cls, description

    # -- argument parsing -----------------------------------------------------------------------------------
    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=f"python -m apps.{self.name}", description=self.description)
        sub = p.add_subparsers(dest="verb", required=True)
        tr = sub.add_parser("train", help="train on normal images (no arguments: the embedded demo data)")
        tr.add_argument("--data", help="KIND:PATH, e.g. mvtec:/data/mvtec, mtd:/data/mt, folder:/my/images, demo")
        tr.add_argument("--category", help="dataset category (e.g. carpet)")
        tr.add_argument("--preset", help=f"settings preset: {', '.join(presets(self.app_dir))} "
                                         "(default: demo without --data, the paper configuration with it)")
        tr.add_argument("--config", help="TOML file merged over the preset")
        tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value, e.g. train.lr=1e-4 or pipeline.reconstructor.name=cnn1x1")
        tr.add_argument("--data-param", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option, e.g. normal=good abnormal=bad masks=masks (folder datasets)")
        tr.add_argument("--epochs", type=int)
        tr.add_argument("--batch-size", type=int)
        tr.add_argument("--image-size", type=int)
        tr.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        tr.add_argument("--seed", type=int)
        tr.add_argument("--out", help="run folder (default runs/<app>/<time>-<data>)")
        tr.add_argument("--resume", action="store_true", help="continue the run in --out (or the latest run)")
        tr.add_argument("--no-test", action="store_true", help="do not evaluate on the test split after training")
        te = sub.add_parser("test", help="evaluate a trained run on its test split: metrics, report, heat maps")
        te.add_argument("--run", action="append", required=True, help="run folder (repeat for a multi-category table)")
        te.add_argument("--out", help="report folder (default RUN/report, or ./report-<time> for several runs)")
        te.add_argument("--figures", type=int, default=8, help="heat-map figures of the worst-scored images")
        te.add_argument("--device", default="auto")
        te.add_argument("--batch-size", type=int)
        pr = sub.add_parser("predict", help="score images with a trained run")
        pr.add_argument("--run", required=True, help="run folder")
        pr.add_argument("inputs", nargs="+", help="image files or folders")
        pr.add_argument("--out", required=True, help="output folder")
        pr.add_argument("--save-maps", action="store_true",
                        help="also save raw float maps (.npy, input resolution; branch maps as STEM.BRANCH.npy)")
        pr.add_argument("--threshold", type=float, help="image decision threshold (default: from validation images)")
        pr.add_argument("--device", default="auto")
        pr.add_argument("--batch-size", type=int, default=8)
        co = sub.add_parser("components", help="the default pipeline and the alternatives for each role")
        co.add_argument("--json", action="store_true")
        return p

    def main(self, argv: list[str] | None = None) -> int:
        args = self.parser().parse_args(argv)
        try:
            return getattr(self, f"cmd_{args.verb}")(args)
        except SsmadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted: completed epochs are kept in the run's checkpoint.pt (resume with --resume)",
                  file=sys.stderr)
            return 130

    # -- train ------------------------------------------------------------------------------------------------
    def train_config(self, args) -> dict[str, Any]:
        from ssmad.core.files import apply_overrides

        from .config import check_config

        preset = args.preset or (None if args.data else "demo")
        overrides = list(args.set)
        for flag, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("seed", "train.seed"),
                          ("image_size", "data.image_size")):
            if getattr(args, flag) is not None:
                overrides.append(f"{key}={getattr(args, flag)}")
        config = load_config(self.app_dir, preset, args.config, overrides)
        data = []
        if args.data:
            # the preset's dataset options belong to its dataset kind: another kind starts without them
            if args.data.split(":", 1)[0] != str(config["data"]["spec"]).split(":", 1)[0]:
                config["data"]["params"] = {}
            data.append(f"data.spec={json.dumps(args.data)}")
        if args.category:
            data.append(f"data.category={json.dumps(args.category)}")
        for item in args.data_param:
            if "=" not in item:
                raise ConfigError(f"--data-param {item!r}: expected KEY=VALUE")
            data.append(f"data.params.{item}")
        config = apply_overrides(config, data)
        check_config(config)
        return config

    #: what ``--set`` may change when a run resumes (the rest of its stored configuration is what it trained with)
    RESUME_KEYS = ("train.epochs", "train.max_minutes", "train.log_every_s", "train.workers", "train.eval_batch_size",
                   "train.threshold_quantile")

    def resume_config(self, args, config: dict[str, Any]) -> dict[str, Any]:
        """The stored configuration of a resumed run with ``--epochs`` and the ``--set`` values of
        :attr:`RESUME_KEYS`; any other change is a ConfigError, not silently ignored."""
        from ssmad.core.files import apply_overrides

        from .config import check_config

        for flag in ("data", "category", "preset", "config", "batch_size", "image_size", "seed", "data_param"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag.replace('_', '-')}: --resume continues a run with the configuration it "
                                  f"was trained with; start a new run (another --out) to change it")
        for item in args.set:
            key = item.split("=", 1)[0].strip()
            if key not in self.RESUME_KEYS:
                raise ConfigError(f"--set {key}: --resume keeps the run's configuration; it may change only "
                                  f"{', '.join(self.RESUME_KEYS)}")
        epochs = [] if args.epochs is None else [f"train.epochs={args.epochs}"]
        config = apply_overrides(config, [*args.set, *epochs])
        check_config(config)
        return config

    def cmd_train(self, args) -> int:
        from ssmad.core.device import resolve_device

        from .engine import seed_everything, train

        device = resolve_device(args.device)
        if args.resume:
            run_dir = Path(args.out) if args.out else latest_run(self.name)
            ckpt = load_checkpoint(run_dir / "checkpoint.pt", self.name)
            config = self.resume_config(args, ckpt["config"])
        else:
            config = self.train_config(args)
            run_dir = Path(args.out) if args.out else new_run_dir(self.name, config)
            if (run_dir / "checkpoint.pt").exists() or (run_dir / "model.pt").exists():
                raise CheckpointError(f"--out {run_dir}: already holds a run; use --resume to continue it or "
                                      "choose another folder (nothing was overwritten)")
        from .data import open_data

        data = open_data(config)  # a wrong path or layout fails here, before any model is built
        seed_everything(int(config["train"]["seed"]))    # the initial weights too: a run repeats with its seed
        method = self.method_cls(config, device)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config)
        print(f"run folder: {run_dir}", flush=True)
        train(method, config, run_dir, resume=args.resume, data=data)
        if not args.no_test:
            self.evaluate_runs([run_dir], run_dir / "report", device, figures=8, method=method)
        print(f"done. run: {run_dir}\n  evaluate: python -m apps.{self.name} test --run {run_dir}\n"
              f"  predict:  python -m apps.{self.name} predict --run {run_dir} IMAGES --out OUT", flush=True)
        return 0

    # -- test -------------------------------------------------------------------------------------------------
    def load_method(self, run_dir: Path, device):
        ckpt = load_checkpoint(run_dir, self.name)
        method = self.method_cls(ckpt["config"], device)
        method.load_state_dict(ckpt["state"])
        method.train(False)
        return method, ckpt

    def cmd_test(self, args) -> int:
        from ssmad.core.device import resolve_device

        device = resolve_device(args.device)
        runs = [Path(r) for r in args.run]
        if args.out:
            out = Path(args.out)
        elif len(runs) == 1:
            out = runs[0] / "report"
        else:
            out = Path(f"report-{time.strftime('%Y%m%d-%H%M%S')}")
        self.evaluate_runs(runs, out, device, figures=args.figures, batch_size=args.batch_size)
        return 0

    def evaluate_runs(self, runs: list[Path], out: Path, device, figures: int = 8, batch_size: int | None = None,
                      method=None) -> dict[str, dict[str, float]]:
        from ssmad.scoring import evaluate
        from ssmad.scoring.report import save_worst, write_metrics

        from .data import open_data
        from .engine import infer

        results: dict[str, dict[str, float]] = {}
        branch_results: dict[str, dict[str, float]] = {}
        type_results: dict[str, dict[str, float]] = {}
        timing: dict[str, Any] = {}
        notes: list[str] = []
        for run_dir in runs:
            if method is None or len(runs) > 1:
                method, ckpt = self.load_method(run_dir, device)
            config = method.config
            data = open_data(config)
            if len(data.test) == 0:
                raise DataError(f"{config['data']['spec']}: the test split is empty; nothing to evaluate")
            bs = batch_size or int(config["train"]["eval_batch_size"])
            scores, maps, branches, info = infer(method, data.test, batch_size=bs, progress="test")
            labels = np.array(data.test.labels, dtype=int)
            masks = info.pop("masks")
            name = data.category or str(config["data"]["spec"]).split(":", 1)[0]
            if name in results:
                name = f"{name} ({run_dir.name})"
            results[name] = evaluate(labels, scores, masks, maps)
            if (note := method.map_note()) is not None:
                notes.append(note if len(runs) == 1 else f"{name}: {note}")
            type_results.update(by_defect_type(name, data.test.defect_types, labels, scores, masks, maps))
            for branch, bmaps in branches.items():  # e.g. VMPFD-AD's local-only and global-only maps
                bscores = method.branch_score(bmaps)
                branch_results[f"{name} [{branch} only]"] = evaluate(labels, bscores, masks, bmaps)
            timing[name] = {"inference_s_per_image": info["per_image_s"], "batch_size": bs, "device": str(device)}
            fig_dir = out / "figures" / name.replace(" ", "_").replace("/", "_")
            if figures > 0:
                names = [Path(p).name for p in data.test.paths]
                save_worst(fig_dir, TestImages(data.test), maps, masks, labels, scores, names, k=figures)
        title = f"apps.{self.name}" + (f" ({'; '.join(notes)})" if notes else "")
        json_path, md_path = write_metrics(out, results, title=title)
        (out / "timing.json").write_text(json.dumps(timing, indent=2))
        print(md_path.read_text())
        if branch_results:  # each branch map alone, from the same model (its own table: not in the mean above)
            _, branch_md = write_metrics(out / "branches", branch_results, title=f"apps.{self.name}: branches alone")
            print(branch_md.read_text())
        if type_results:  # each defect type against the normal test images (which types the model misses)
            _, type_md = write_metrics(out / "by_type", type_results,
                                       title=f"apps.{self.name}: each defect type against all normal test images")
            print(type_md.read_text())
        print(f"report: {md_path}  (metrics JSON {json_path}, figures in {out / 'figures'})", flush=True)
        return results

    # -- predict ----------------------------------------------------------------------------------------------
    def cmd_predict(self, args) -> int:
        import torch

        from ssmad.core.device import resolve_device
        from ssmad.core.files import atomic_write_text
        from ssmad.datasets import load_image, resize_image
        from ssmad.scoring.report import overlay

        device = resolve_device(args.device)
        method, ckpt = self.load_method(Path(args.run), device)
        size = int(method.config["data"]["image_size"])
        files = collect_images(args.inputs)
        thresholds = ckpt.get("thresholds") or {}
        threshold = args.threshold if args.threshold is not None else thresholds.get("image")
        pixel_threshold = thresholds.get("pixel")
        out = Path(args.out)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        if args.save_maps:
            (out / "maps").mkdir(parents=True, exist_ok=True)
        rows = []
        from PIL import Image

        for start in range(0, len(files), args.batch_size):
            chunk = files[start:start + args.batch_size]
            originals = [load_image(f) for f in chunk]  # H×W×3 float in [0, 1]; DataError names a bad file
            batch = torch.stack([resize_image(im, size) for im in originals]).to(device)
            res = method.predict(batch)
            maps = res.anomaly_map[:, 0].float().cpu()
            branches = {name: m[:, 0].float().cpu() for name, m in res.extras.items()} if args.save_maps else {}
            for i, (f, im, amap, score) in enumerate(zip(chunk, originals, maps, res.score.float().cpu().tolist())):
                full = _to_size(amap, im.shape[:2])
                stem = unique_stem(f, files)
                vmin, vmax = display_range(thresholds, full)
                Image.fromarray(overlay(im, full, vmin=vmin, vmax=vmax)).save(out / "overlays" / f"{stem}.png")
                mask = full > pixel_threshold if pixel_threshold is not None else np.zeros_like(full, bool)
                Image.fromarray((mask * 255).astype(np.uint8)).save(out / "masks" / f"{stem}.png")
                if args.save_maps:  # the method's map, and each branch map alone as <stem>.<branch>.npy
                    np.save(out / "maps" / f"{stem}.npy", full.astype(np.float32))
                    for name, bmaps in branches.items():
                        branch = _to_size(bmaps[i], im.shape[:2])
                        np.save(out / "maps" / f"{stem}.{name}.npy", branch.astype(np.float32))
                decision = "" if threshold is None else ("anomalous" if score > threshold else "normal")
                rows.append({"image": str(f), "score": f"{score:.6g}", "decision": decision,
                             "threshold": "" if threshold is None else f"{threshold:.6g}",
                             "overlay": f"overlays/{stem}.png", "mask": f"masks/{stem}.png"})
                print(f"{f}: score {score:.4f} {decision}", flush=True)
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / "predictions.csv", buf.getvalue())
        print(f"{len(rows)} images scored; results in {out / 'predictions.csv'}")
        return 0

    # -- components -------------------------------------------------------------------------------------------
    def cmd_components(self, args) -> int:
        config = load_config(self.app_dir, None, None, [])
        rows = []
        for entry in config["pipeline"]:
            alts = [c.name for c in components(entry["kind"]) if c.name != entry["name"]]
            alts = [a for a in alts if a in self.method_cls.alternatives.get(entry["role"], alts)]
            params = {k: v for k, v in entry.items() if k not in ("role", "kind", "name")}
            rows.append({"role": entry["role"], "kind": entry["kind"], "name": entry["name"], "params": params,
                         "enabled": component(config, entry["role"]) is not None, "alternatives": alts})
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"apps.{self.name} default pipeline ({self.app_dir / 'pipeline.toml'}):")
        for r in rows:
            params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
            print(f"  {r['role']:<14} {r['kind']}/{r['name']}" + (f"  ({params})" if params else ""))
            if r["alternatives"]:
                print(f"  {'':<14} alternatives: {', '.join(r['alternatives'])}")
        print(f"swap one with --set pipeline.<role>.name=NAME; presets: {', '.join(presets(self.app_dir))}")
        return 0


def by_defect_type(name: str, types: list[str], labels: np.ndarray, scores: np.ndarray, masks: np.ndarray,
                   maps: np.ndarray) -> dict[str, dict[str, float]]:
    """All metrics of each defect type's anomalous test images together with every normal test image, keyed
    ``"NAME: TYPE"``; nothing when the test split has fewer than two defect types (the table would repeat the
    whole) or no normal image."""
    from ssmad.scoring import evaluate

    kinds = np.array(types)
    anomalous = sorted({str(t) for t in kinds[labels == 1]})
    if len(anomalous) < 2 or not (labels == 0).any():
        return {}
    out = {}
    for kind in anomalous:
        sel = (labels == 0) | ((labels == 1) & (kinds == kind))
        out[f"{name}: {kind}"] = evaluate(labels[sel], scores[sel], masks[sel], maps[sel])
    return out


class TestImages(Sequence):
    """H×W×3 images of a sample list, decoded only when a figure asks for one."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.samples[i].image.permute(1, 2, 0).numpy()


def _to_size(amap, size: tuple[int, int]) -> np.ndarray:
    """An H'×W' torch map resized (bilinear) to ``size`` = (H, W), as a numpy array."""
    import torch

    return torch.nn.functional.interpolate(amap[None, None], size=size, mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def display_range(thresholds: dict[str, float], amap: np.ndarray) -> tuple[float, float]:
    """Colour scale of overlays: from the median of normal validation pixels to as far above the pixel
    threshold, so the threshold sits mid-scale; per-image min/max when the run has no validation images."""
    if "pixel" in thresholds and "pixel_low" in thresholds:
        low, thr = thresholds["pixel_low"], thresholds["pixel"]
        return low, max(thr + (thr - low), low + 1e-6)
    return float(amap.min()), max(float(amap.max()), float(amap.min()) + 1e-6)


def collect_images(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise DataError(f"{p}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


def unique_stem(f: Path, files: list[Path]) -> str:
    same = [g for g in files if g.stem == f.stem]
    if len(same) == 1:
        return f.stem
    return f"{f.parent.name}_{f.stem}" if sum(g.parent.name == f.parent.name for g in same) == 1 else \
        f"{f.stem}_{files.index(f)}"
