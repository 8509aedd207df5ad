"""The command line shared by both apps: ``train``, ``test``, ``predict``, ``components``."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssmad.core import CheckpointError, ConfigError, DataError, SsmadError, components

from .config import component, load_config, presets
from .predict_io import NAMING, output_stems
from .runs import latest_run, load_checkpoint, new_run_dir, remove_stale_temporaries, write_config


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


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
        tr.add_argument("--resume", action="store_true", help="continue the run in --out (or the latest run); "
                        "with --data KIND:PATH, where its data is now")
        tr.add_argument("--no-test", action="store_true", help="do not evaluate on the test split after training")
        te = sub.add_parser("test", help="evaluate a trained run on its test split: metrics, report, heat maps")
        te.add_argument("--run", action="append", required=True, help="run folder (repeat for a multi-category table)")
        te.add_argument("--out", help="report folder (default RUN/report, or ./report-<time> for several runs)")
        te.add_argument("--figures", type=int, default=8, help="heat-map figures of the worst-scored images")
        te.add_argument("--device", default="auto")
        te.add_argument("--batch-size", type=positive_int, help="images per batch (default train.eval_batch_size)")
        add_data_flags(te, "evaluate on this dataset (KIND:PATH) instead of the run's own, e.g. where the run's "
                           "data moved; the run's [data.params] are kept for the same KIND")
        pr = sub.add_parser("predict", help="score images with a trained run", epilog=NAMING)
        pr.add_argument("--run", required=True, help="run folder")
        pr.add_argument("inputs", nargs="+", help="image files or folders")
        pr.add_argument("--out", required=True, help="output folder (refused when it holds an earlier predict's "
                                                     "results, unless --overwrite)")
        pr.add_argument("--overwrite", action="store_true",
                        help="first remove the files an earlier predict wrote in --out (those listed in its "
                             "predict-manifest.json, nothing else)")
        pr.add_argument("--save-maps", action="store_true",
                        help="also save raw float maps (.npy, input resolution; branch maps as STEM.BRANCH.npy)")
        pr.add_argument("--threshold", type=float, help="image decision threshold (default: from validation images)")
        pr.add_argument("--device", default="auto")
        pr.add_argument("--batch-size", type=positive_int, default=8)
        co = sub.add_parser("components", help="the default pipeline and the alternatives for each role")
        co.add_argument("--json", action="store_true")
        return p

    def main(self, argv: list[str] | None = None) -> int:
        args = self.parser().parse_args(argv)
        self._train_dir: Path | None = None   # the run folder of ``train``, once known (for the interrupt message)
        self._unfinished: str | None = None   # how to finish the unfinished run that test/predict use, if one
        self._earlier_model: int | None = -1   # model.pt's mtime when training started (None: absent; -1: not yet)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warning(set())
                return getattr(self, f"cmd_{args.verb}")(args)
        except SsmadError as exc:
            from ssmad.scoring import NotFittedError

            if isinstance(exc, NotFittedError) and self._unfinished:  # a method that cannot score without them
                exc = CheckpointError(f"{exc}; the run cannot score images before it finishes training: "
                                      f"{self._unfinished}")
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"interrupted{self.interrupted_note(args)}", file=sys.stderr)
            return 130

    def interrupted_note(self, args) -> str:
        """What an interrupted command leaves behind, as the rest of the "interrupted" line."""
        if args.verb != "train":
            return ""
        run_dir = self._train_dir
        if run_dir is None:
            return " before training started; nothing was written"
        ckpt, model = run_dir / "checkpoint.pt", run_dir / "model.pt"
        if model.is_file() and self._earlier_model != -1 and model.stat().st_mtime_ns != self._earlier_model:
            return (f" after training: the model is in {model}; evaluate it with: python -m apps.{self.name} test "
                    f"--run {shlex.quote(str(run_dir))}")
        if ckpt.is_file():
            return (f": the completed epochs are kept in {ckpt}; resume with: python -m apps.{self.name} train "
                    f"--resume --out {shlex.quote(str(run_dir))}")
        return (f" before the first epoch completed: {run_dir} holds no checkpoint to resume; start the training "
                f"again")

    # -- train ------------------------------------------------------------------------------------------------
    def train_config(self, args) -> dict[str, Any]:
        from .config import anchor_paths, check_config

        preset = args.preset or (None if args.data else "demo")
        overrides = list(args.set)
        for flag, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("seed", "train.seed"),
                          ("image_size", "data.image_size")):
            if getattr(args, flag) is not None:
                overrides.append(f"{key}={getattr(args, flag)}")
        config = with_data_flags(load_config(self.app_dir, preset, args.config, overrides), args)
        check_config(config)
        anchor_paths(config)   # stored absolute: test and --resume find the data and files from any directory
        return config

    #: what ``--set`` may change when a run resumes (the rest of its stored configuration is what it trained with)
    RESUME_KEYS = ("train.epochs", "train.max_minutes", "train.log_every_s", "train.workers", "train.eval_batch_size",
                   "train.threshold_quantile")

    def edited_settings(self, run_dir: Path, stored: dict[str, Any], verb: str) -> list[str]:
        """Check ``RUN/config.toml`` against the configuration ``stored`` in the checkpoint that ``verb`` ("resume",
        "test" or "predict") uses. An edit of a key outside :attr:`RESUME_KEYS` is a ConfigError naming the keys
        (nothing is then changed): the model was built and trained with the stored values. Edits of
        :attr:`RESUME_KEYS` are returned as ``--set`` items, which a resume applies (before the command line's);
        ``test`` and ``predict`` do not read them."""
        from .runs import config_edits, describe_edits

        edits = config_edits(run_dir, stored)
        other = {k: v for k, v in edits.items() if k not in self.RESUME_KEYS}
        if other and verb != "resume" and (run_dir / "checkpoint.pt").is_file():
            # a resume that extends a finished run rewrites config.toml with its first new checkpoint
            ongoing = config_edits(run_dir, load_checkpoint(run_dir / "checkpoint.pt", self.name)["config"])
            if all(k in self.RESUME_KEYS for k in ongoing):
                other = {}
        if other:
            run = shlex.quote(str(run_dir))
            fix = ("--resume continues with the checkpoint's configuration and takes only "
                   f"{', '.join(self.RESUME_KEYS)} from config.toml or --set" if verb == "resume" else
                   f"{verb} uses the configuration the model was trained with")
            raise ConfigError(f"{run_dir / 'config.toml'} was edited after training: {describe_edits(other)}; "
                              f"{fix}. Undo the edit, or train a new run with it: python -m apps.{self.name} train "
                              f"--config {shlex.quote(str(run_dir / 'config.toml'))} --out NEW_FOLDER "
                              f"(nothing was changed in {run})")
        sets = [f"{k}={json.dumps(new)}" for k, (_, new) in edits.items() if k in self.RESUME_KEYS and new is not None]
        for item in sets if verb == "resume" else []:
            print(f"note: --resume uses {item.replace('=', ' = ', 1)} from {run_dir / 'config.toml'}",
                  file=sys.stderr, flush=True)
        return sets

    def resume_config(self, args, config: dict[str, Any], file_sets: Sequence[str] = ()) -> dict[str, Any]:
        """The stored configuration of a resumed run with ``--epochs``, the ``--set`` values of :attr:`RESUME_KEYS`
        (after ``file_sets``, the same keys as edited in config.toml) and ``--data`` (with ``--data-param``) naming
        the run's dataset kind in a new place; any other change is a ConfigError, not silently ignored."""
        from ssmad.core.files import apply_overrides

        from .config import anchor_paths, check_config

        for flag in ("category", "preset", "config", "batch_size", "image_size", "seed"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag.replace('_', '-')}: --resume continues a run with the configuration it "
                                  f"was trained with; start a new run (another --out) to change it")
        if args.data_param and not args.data:
            raise ConfigError("--data-param: with --resume it belongs to --data (the run's data in a new place)")
        if args.data:   # the same data in a new place (checked against split.json before training continues)
            kind = str(config["data"]["spec"]).split(":", 1)[0]
            if args.data.split(":", 1)[0] != kind:
                raise ConfigError(f"--data {args.data}: --resume continues on the run's own data ({kind}:...); "
                                  f"--data may only give its new place, as {kind}:PATH")
            config = with_data_flags(config, args)
        for item in args.set:
            key = item.split("=", 1)[0].strip()
            if key not in self.RESUME_KEYS:
                raise ConfigError(f"--set {key}: --resume keeps the run's configuration; it may change only "
                                  f"{', '.join(self.RESUME_KEYS)}")
        epochs = [] if args.epochs is None else [f"train.epochs={args.epochs}"]
        config = apply_overrides(config, [*file_sets, *args.set, *epochs])
        check_config(config)
        if args.data:
            anchor_paths(config)
        return config

    def cmd_train(self, args) -> int:
        from ssmad.core.device import resolve_device

        from .engine import seed_everything, train

        device = resolve_device(args.device)
        if args.out:
            out_folder(Path(args.out), "--out")
        if args.resume:
            run_dir = Path(args.out) if args.out else latest_run(self.name)
            if not run_dir.is_dir():
                raise CheckpointError(f"run folder not found: {run_dir}")
            self._train_dir = run_dir
            stale = remove_stale_temporaries(run_dir)
            if stale:
                print(f"note: removed {len(stale)} temporary file(s) that an interrupted run left in {run_dir}: "
                      f"{', '.join(stale)}", file=sys.stderr, flush=True)
            ckpt = load_checkpoint(run_dir / "checkpoint.pt", self.name)
            config = self.resume_config(args, ckpt["config"], self.edited_settings(run_dir, ckpt["config"], "resume"))
            done, epochs = int(ckpt["epoch"]), int(config["train"]["epochs"])
            if args.epochs is not None and args.epochs < done:
                raise ConfigError(f"--epochs {args.epochs}: {run_dir} has already completed {done} epochs; give "
                                  f"--epochs {done} or more to train longer (or leave it out)")
            if done >= epochs and (run_dir / "model.pt").is_file():
                try:
                    load_checkpoint(run_dir / "model.pt", self.name)
                except CheckpointError as exc:   # damaged: fitted again from the last epoch's checkpoint
                    print(f"note: {exc}; writing it again from {run_dir / 'checkpoint.pt'} (epoch {done})",
                          file=sys.stderr, flush=True)
                else:
                    print(f"{run_dir} already finished: {done} of {epochs} epochs trained and model.pt written; "
                          f"nothing to do (raise --epochs to train longer)", flush=True)
                    return 0
        else:
            config = self.train_config(args)
            run_dir = Path(args.out) if args.out else new_run_dir(self.name, config)
            if (run_dir / "checkpoint.pt").exists() or (run_dir / "model.pt").exists():
                raise CheckpointError(f"--out {run_dir}: already holds a run; use --resume to continue it or "
                                      "choose another folder (nothing was overwritten)")
        from .data import open_data

        data = open_data(config, verify=True)  # a wrong path, layout or file fails here, before any model is built
        seed_everything(int(config["train"]["seed"]))    # the initial weights too: a run repeats with its seed
        method = self.method_cls(config, device)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._train_dir = run_dir
        if not args.resume:   # a resumed run's config is rewritten once its data has been checked (engine.train)
            write_config(run_dir, config)
        print(f"run folder: {run_dir}", flush=True)
        self._earlier_model = (run_dir / "model.pt").stat().st_mtime_ns if (run_dir / "model.pt").is_file() else None
        try:
            payload = train(method, config, run_dir, resume=args.resume, data=data)
        except BaseException:
            if not args.resume:
                remove_unstarted(run_dir)
            raise
        if not args.no_test and len(data.test) == 0:
            print(f"note: {config['data']['spec']} has no test images; the run is not evaluated", flush=True)
        elif not args.no_test:
            self.evaluate_runs([run_dir], run_dir / "report", device, figures=8, method=method,
                               thresholds=payload["thresholds"])
        run = shlex.quote(str(run_dir))
        print(f"done. run: {run_dir}\n  evaluate: python -m apps.{self.name} test --run {run}\n"
              f"  predict:  python -m apps.{self.name} predict --run {run} IMAGES --out OUT", flush=True)
        return 0

    # -- test -------------------------------------------------------------------------------------------------
    def load_method(self, run_dir: Path, device, verb: str = "test"):
        """(method, checkpoint) of a run folder (its model.pt, else checkpoint.pt) or a checkpoint file, built on
        ``device`` for scoring; a ConfigError when the run's config.toml was edited (:meth:`edited_settings`)."""
        ckpt = load_checkpoint(run_dir, self.name)
        self.edited_settings(run_dir if run_dir.is_dir() else run_dir.parent, ckpt["config"], verb)
        method = self.method_cls(ckpt["config"], device, for_training=False)
        method.scan_backends()        # a scan backend named for another device: one error before anything is scored
        method.load_state_dict(ckpt["state"])
        method.train(False)
        return method, ckpt

    def unfinished_note(self, run: Path, ckpt: dict[str, Any], verb: str) -> bool:
        """Print one line when ``ckpt`` is not a finished model (an epoch checkpoint: no thresholds, no statistics
        fitted after training) or, for ``predict``, a finished one without thresholds; True when it is unfinished.
        The methods' own warnings about the missing statistics are silenced then: this line says it."""
        unfinished = "thresholds" not in ckpt  # model.pt always holds them (empty without held-out images)
        run_dir = run if run.is_dir() else run.parent
        if unfinished:
            done, epochs = ckpt.get("epoch"), ckpt.get("config", {}).get("train", {}).get("epochs")
            if run.is_dir() or not (run_dir / "model.pt").is_file():
                what = (f"{run_dir} did not finish training (its checkpoint.pt holds epoch {done} of {epochs}, no "
                        f"model.pt)")
                fix = (f"; finish it with: python -m apps.{self.name} train --resume --out "
                       f"{shlex.quote(str(run_dir))}")
            else:
                what = f"{run} is the checkpoint of epoch {done} of {epochs}, not the finished model"
                fix = f"; use --run {shlex.quote(str(run_dir))} for its model.pt"
            means = ("its maps are not normalised" + (", and without decision thresholds no image gets a decision "
                     "unless --threshold is given (no masks are written)" if verb == "predict" else ""))
            print(f"note: {what}: without the statistics fitted after training {means}{fix}", file=sys.stderr,
                  flush=True)
            self._unfinished = fix.lstrip("; ")
            warnings.filterwarnings("ignore", message=r".*a checkpoint of a training that did not finish",
                                    category=RuntimeWarning)
        elif verb == "predict" and not ckpt.get("thresholds"):
            print(f"note: {run_dir} has no decision thresholds (it held out no normal images when training): no "
                  f"image gets a decision unless --threshold is given, and no masks are written",
                  file=sys.stderr, flush=True)
        return unfinished

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
        out_folder(out, "--out")
        self.evaluate_runs(runs, out, device, figures=args.figures, batch_size=args.batch_size,
                           data_flags=data_flags(args))
        return 0

    def evaluate_runs(self, runs: list[Path], out: Path, device, figures: int = 8, batch_size: int | None = None,
                      method=None, data_flags=None, thresholds=None) -> dict[str, dict[str, float]]:
        """Test each run on its test split (``data_flags``: the parsed ``--data``/``--category``/``--data-param``
        of ``test``, which point it at another place or dataset) and write the report to ``out``. ``method`` and
        ``thresholds``: the model of the one run just trained and its decision thresholds (else read from the run).
        With an image threshold, the report also says what it decides (``decisions.md``)."""
        from ssmad.scoring import evaluate
        from ssmad.scoring.report import decisions_at, save_worst, write_decisions, write_metrics

        from .engine import infer

        results: dict[str, dict[str, float]] = {}
        branch_results: dict[str, dict[str, float]] = {}
        type_results: dict[str, dict[str, float]] = {}
        timing: dict[str, Any] = {}
        decisions: dict[str, dict[str, float]] = {}
        quantiles: set[float] = set()
        notes: list[str] = []
        for run_dir in runs:
            run_thresholds = thresholds
            if method is None or len(runs) > 1:
                method, ckpt = self.load_method(run_dir, device)
                self.unfinished_note(run_dir, ckpt, "test")
                run_thresholds = ckpt.get("thresholds")
            config, data = open_run_dataset(
                run_dir, method.config, data_flags,
                f"python -m apps.{self.name} test --run {shlex.quote(str(run_dir))} --data KIND:PATH")
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
            threshold = (run_thresholds or {}).get("image")
            if threshold is not None:
                decisions[name] = decisions_at(labels, scores, threshold)
                quantiles.add(float(method.config["train"].get("threshold_quantile", 0.99)))
            fig_dir = out / "figures" / name.replace(" ", "_").replace("/", "_")
            if figures > 0:
                names = output_stems([Path(p) for p in data.test.paths])   # the figure adds ".png"
                save_worst(fig_dir, TestImages(data.test), maps, masks, labels, scores, names, k=figures,
                           threshold=threshold)
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
        if decisions:  # what the run's own image threshold (the one predict uses) decides on these test images
            q = ", ".join(f"{x:g}" for x in sorted(quantiles))
            _, decisions_md = write_decisions(
                out, decisions, title=f"apps.{self.name}: decisions at the run's image threshold",
                note=f"An image is flagged when its score is above the threshold, as `predict` decides. The threshold "
                     f"is the {q} quantile of the scores of the normal images held out from training (not the test "
                     f"images); `predict --threshold` sets another.")
            print(decisions_md.read_text())
        print(f"report: {md_path}  (metrics JSON {json_path}, figures in {out / 'figures'})", flush=True)
        return results

    # -- predict ----------------------------------------------------------------------------------------------
    def cmd_predict(self, args) -> int:
        from ssmad.core.device import resolve_device

        from . import predict_io as pio
        from .predictor import predict_files

        out = Path(args.out)
        out_folder(out, "--out")
        earlier = pio.Manifest.read(out)
        if earlier is not None and not args.overwrite:
            raise ConfigError(f"--out {out}: already holds the results of an earlier predict "
                              f"({len(earlier.on_disk())} files listed in {pio.MANIFEST_NAME}); choose another "
                              f"folder, or give --overwrite to replace them (nothing was changed)")
        device = resolve_device(args.device)
        method, ckpt = self.load_method(Path(args.run), device, "predict")
        files = pio.collect_images(args.inputs, skip=[out / sub for sub in pio.OUTPUT_FOLDERS])
        self.unfinished_note(Path(args.run), ckpt, "predict")
        thresholds = ckpt.get("thresholds") or {}
        threshold = args.threshold if args.threshold is not None else thresholds.get("image")
        pixel_threshold = thresholds.get("pixel")
        stems = pio.output_stems(files)
        planned = pio.planned_outputs(stems, masks=pixel_threshold is not None, maps=args.save_maps)
        pio.refuse_clashes(out, pio.clashes(out, planned, earlier) + (
            pio.branch_clashes(out, stems, earlier) if args.save_maps else []), earlier)
        if earlier is not None:
            earlier.remove()
        manifest = pio.Manifest(out, str(args.run))
        manifest.record([pio.CSV_NAME])
        rows: dict[int, dict[str, str]] = {}
        try:
            for start in range(0, len(files), args.batch_size):
                chunk = range(start, min(start + args.batch_size, len(files)))
                preds = predict_files(method, [files[k] for k in chunk], threshold, branches=args.save_maps)
                for k, pred in zip(chunk, preds):
                    rows[k] = row = pio.write_prediction(out, manifest, stems[k], pred, thresholds, threshold,
                                                         args.save_maps)
                    if row["error"]:
                        print(f"error: {row['error']} (skipped)", file=sys.stderr, flush=True)
                    else:
                        print(f"{files[k]}: score {float(row['score']):.4f} {row['decision']}".rstrip(), flush=True)
        finally:   # the images scored so far are listed even when the command is interrupted
            csv_path = pio.write_csv(out, rows, pio.FIELDS)
        failed = sum(bool(r["error"]) for r in rows.values())
        n_flagged = sum(r["decision"] == "anomalous" for r in rows.values())
        decided = "" if threshold is None else f", {n_flagged} anomalous (score above {threshold:.6g})"
        errors = f"; {failed} could not be scored (the error column says why)" if failed else ""
        print(f"{len(rows) - failed} images scored{decided}{errors}; results in {csv_path}", flush=True)
        return 2 if failed else 0

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


#: what a new run's folder holds before its first epoch is saved: a failure then removes them (and the folder), so
#: the same command can run again once the cause is fixed (a new run refuses an existing folder)
UNSTARTED_FILES = ("config.toml", "split.json", "train.log")


def remove_unstarted(run_dir: Path) -> None:
    """Remove a new run's folder that holds only :data:`UNSTARTED_FILES` (nothing else: no checkpoint, no distilled
    model)."""
    if not run_dir.is_dir() or any(f.name not in UNSTARTED_FILES for f in run_dir.iterdir()):
        return
    for name in UNSTARTED_FILES:
        (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def with_data_flags(config: dict[str, Any], args) -> dict[str, Any]:
    """``config`` with its ``[data]`` changed by ``--data``, ``--category`` and ``--data-param`` (a copy; absent
    flags change nothing). Dataset options belong to a dataset kind: another kind starts without the config's."""
    import copy

    from ssmad.core.files import apply_overrides

    config = copy.deepcopy(config)
    data = []
    if args.data:
        if args.data.split(":", 1)[0] != str(config["data"]["spec"]).split(":", 1)[0]:
            config["data"]["params"] = {}
        data.append(f"data.spec={json.dumps(args.data)}")
    if args.category:
        data.append(f"data.category={json.dumps(args.category)}")
    for item in args.data_param:
        if "=" not in item:
            raise ConfigError(f"--data-param {item!r}: expected KEY=VALUE")
        data.append(f"data.params.{item}")
    return apply_overrides(config, data)


def add_data_flags(parser: argparse.ArgumentParser, data_help: str) -> None:
    """``--data KIND:PATH [--category C] [--data-param KEY=VALUE]``: the dataset a finished run is evaluated on
    (``test``, the diagnostic scripts), read back by :func:`data_flags`."""
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--category", help="with --data: the dataset category (default the run's)")
    parser.add_argument("--data-param", action="append", default=[], metavar="KEY=VALUE",
                        help="with --data: a dataset option over the run's (repeatable)")


def data_flags(args) -> Any:
    """``args`` when they give ``--data`` (for :func:`with_data_flags`), else None; a ConfigError for ``--category``
    or ``--data-param`` without it (they belong to ``--data``)."""
    if args.data:
        return args
    if args.category or args.data_param:
        raise ConfigError("--category and --data-param belong to --data (the dataset to evaluate on); give --data "
                          "KIND:PATH too")
    return None


def open_run_dataset(run_dir: Path, config: dict[str, Any], data_flags, retry: str) -> tuple[dict[str, Any], Any]:
    """(config, dataset) that a finished run is evaluated on: its own data, or the dataset that ``data_flags`` (the
    parsed ``--data``/``--category``/``--data-param``, or None) name. The test split is checked against the run's
    ``split.json`` (a DataError when training images are now test images; other differences are printed as notes).
    When the run's own data is missing, the DataError ends with ``retry``: the command that gives its new place."""
    from .data import open_data
    from .engine import check_split

    config = config if data_flags is None else with_data_flags(config, data_flags)
    try:
        data = open_data(config)
    except DataError as exc:
        if data_flags is not None:
            raise
        raise DataError(f"{exc} (the data {run_dir} was trained on; if it moved, or the run was trained in another "
                        f"directory before apps 0.9.0, give its place: {retry})") from None
    for note in check_split(run_dir, data):
        print(f"note: {note}", file=sys.stderr, flush=True)
    return config, data


def out_folder(path: Path, flag: str) -> Path:
    """``path`` as an output folder: a ConfigError when it is an existing file."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a folder")
    return path


def _one_line_warning(seen: set[tuple[type, str]]):
    """A ``warnings.showwarning`` that prints each distinct warning once, as one plain line on stderr: "note: ..."
    for metrics the data cannot define, "warning: ..." for the rest (no source line)."""
    def show(message, category, filename, lineno, file=None, line=None):
        from ssmad.scoring import MetricUndefinedWarning

        text = " ".join(str(message).split())
        if (category, text) in seen:
            return
        seen.add((category, text))
        if issubclass(category, MetricUndefinedWarning):
            print(f"note: {text}", file=sys.stderr, flush=True)
        else:
            print(f"warning: {text}", file=sys.stderr, flush=True)
    return show
