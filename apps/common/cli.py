"""The command line of both apps: ``train``, ``test``, ``predict``, ``export``, ``components``. Each verb parses its
flags, calls the Python API (:mod:`apps.common.app`, :mod:`apps.common.run`) and prints; errors a user can cause are one
``error:`` line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ssmad.core import CheckpointError, ConfigError, SsmadError
from ssmad.core.device import PRECISIONS

from .config import presets
from .distributed import launched
from .export import FORMATS
from .predict_io import NAMING
from .training import DataChoice, TrainOptions, TrainState, out_folder

if TYPE_CHECKING:
    from .app import App


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_data_flags(parser: argparse.ArgumentParser, data_help: str) -> None:
    """``--data KIND:PATH [--category C] [--data-param KEY=VALUE]``: the dataset a finished run is evaluated on
    (``test``, the diagnostic scripts), read back by :func:`data_choice`."""
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--category", help="with --data: the dataset category (default the run's)")
    parser.add_argument("--data-param", action="append", default=[], metavar="KEY=VALUE",
                        help="with --data: a dataset option over the run's (repeatable)")


def data_choice(args) -> DataChoice | None:
    """The dataset that ``--data``/``--category``/``--data-param`` name, or None without ``--data`` (a ConfigError
    for ``--category`` or ``--data-param`` alone: they belong to ``--data``)."""
    return DataChoice(args.data, args.category, tuple(args.data_param)).check()


def parser(app: App) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m apps.{app.name}", description=app.description)
    sub = p.add_subparsers(dest="verb", required=True)
    tr = sub.add_parser("train", help="train on normal images (no arguments: the embedded demo data)")
    tr.add_argument("--data", help="KIND:PATH, e.g. mvtec:/data/mvtec, mtd:/data/mt, folder:/my/images, demo")
    tr.add_argument("--category", help="dataset category (e.g. carpet); all, or a list (carpet,grid): one run per "
                                       "category under --out and a summary of them")
    tr.add_argument("--devices", type=positive_int, help="with several categories: how many train at once, one "
                    "process per device (default: every GPU when there are several, else 1)")
    tr.add_argument("--preset", help=f"settings preset: {', '.join(presets(app.app_dir))} "
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
    te.add_argument("--run", action="append", required=True, help="run folder (repeat for a multi-category table), "
                    "or the parent folder of a training of several categories")
    te.add_argument("--out", help="report folder (default RUN/report, or ./report-<time> for several runs)")
    te.add_argument("--figures", type=int, default=8, help="heat-map figures of the worst-scored images")
    te.add_argument("--device", default="auto")
    te.add_argument("--batch-size", type=positive_int, help="images per batch (default train.eval_batch_size)")
    add_data_flags(te, "evaluate on this dataset (KIND:PATH) instead of the run's own, e.g. where the run's data "
                       "moved; the run's [data.params] are kept for the same KIND")
    te.add_argument("--precision", choices=PRECISIONS, help="of the networks (default the run's train.precision)")
    pr = sub.add_parser("predict", help="score images with a trained run or an exported model", epilog=NAMING)
    source = pr.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder")
    source.add_argument("--model", help="an exported model (.onnx, .xml, .pt2, with its .json beside it)")
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
    pr.add_argument("--precision", choices=PRECISIONS, help="with --run: of the networks (default the run's)")
    pr.add_argument("--threads", type=positive_int, help="with --model: the runtime's threads")
    ex = sub.add_parser("export", help="export a finished run to ONNX, OpenVINO or torch.export")
    ex.add_argument("--run", required=True, help="run folder (finished: with model.pt)")
    ex.add_argument("--format", default="onnx", choices=list(FORMATS), help="default onnx")
    ex.add_argument("--out", required=True, help="the model file (.onnx, .xml, .pt2); FILE.json is written beside")
    co = sub.add_parser("components", help="the default pipeline and the alternatives for each role")
    co.add_argument("--json", action="store_true")
    return p


def main(app: App, argv: list[str] | None = None) -> int:
    """Run one verb; the exit code: 0, 2 for an error a user can cause (one ``error:`` line), 130 on Ctrl-C."""
    args = parser(app).parse_args(argv)
    state = TrainState()
    unfinished: list[str] = []     # how to finish the unfinished run that test/predict use, if one
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(set())
            return VERBS[args.verb](app, args, state, unfinished)
    except SsmadError as exc:
        from ssmad.scoring import NotFittedError

        if isinstance(exc, NotFittedError) and unfinished:  # a method that cannot score without them
            exc = CheckpointError(f"{exc}; the run cannot score images before it finishes training: {unfinished[0]}")
        rank = launched()
        print(f"{'' if rank.main else f'rank {rank.rank}: '}error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"interrupted{state.interrupted(app.name) if args.verb == 'train' else ''}", file=sys.stderr)
        return 130


def cmd_train(app: App, args, state: TrainState, unfinished: list[str]) -> int:
    from .benchmark import wants_benchmark
    from .categories import train_categories
    from .training import train

    opts = TrainOptions(DataChoice(args.data, args.category, tuple(args.data_param)), args.preset, args.config,
                        list(args.set), args.epochs, args.batch_size, args.image_size, args.seed, args.device,
                        args.out, args.resume, not args.no_test)
    if wants_benchmark(args.category, args.resume, args.out):
        return 2 if train_categories(app, opts, args.devices, state).failed else 0
    if args.devices is not None:
        raise ConfigError("--devices: trains several categories at once (with --category all or a list); to train "
                          "one model on several processes, launch it with torchrun --nproc-per-node N")
    run = train(app, opts, state)
    if run is not None and state.model_mtime != -1 and launched().main:   # trained now (not "already finished")
        quoted = _quote(run.path)
        print(f"done. run: {run.path}\n  evaluate: python -m apps.{app.name} test --run {quoted}\n"
              f"  predict:  python -m apps.{app.name} predict --run {quoted} IMAGES --out OUT", flush=True)
    return 0


def cmd_test(app: App, args, state: TrainState, unfinished: list[str]) -> int:
    from ssmad.core.device import resolve_device

    from .benchmark import Benchmark, is_benchmark
    from .evaluate import evaluate_runs
    from .run import Run

    runs = [Path(r) for r in args.run]
    if len(runs) == 1 and is_benchmark(runs[0]):   # every category of a benchmark, and its summary
        bench = Benchmark.open(runs[0], app).test(
            resolve_device(args.device), out=args.out, figures=args.figures, batch_size=args.batch_size,
            data=data_choice(args), precision=args.precision)
        return 2 if bench.failed else 0
    if args.out:
        out = Path(args.out)
    elif len(runs) == 1:
        out = runs[0] / "report"
    else:
        out = Path(f"report-{time.strftime('%Y%m%d-%H%M%S')}")
    out_folder(out, "--out")
    choice = data_choice(args)
    device = resolve_device(args.device)
    opened = []
    for path in runs:
        run = Run.open(path, app, "test")
        if not run.finished:
            unfinished.append(run.finish_hint())
        opened.append(run)
    evaluate_runs(app, opened, out, device, figures=args.figures, batch_size=args.batch_size, data=choice,
                  precision=args.precision)
    return 0


def cmd_predict(app: App, args, state: TrainState, unfinished: list[str]) -> int:
    from . import predict_io as pio
    from .run import Run

    out = out_folder(Path(args.out), "--out")
    earlier = pio.Manifest.read(out)
    if earlier is not None and not args.overwrite:
        raise ConfigError(f"--out {out}: already holds the results of an earlier predict "
                          f"({len(earlier.on_disk())} files listed in {pio.MANIFEST_NAME}); choose another folder, or "
                          f"give --overwrite to replace them (nothing was changed)")
    if args.model:
        from .exported import ExportedModel

        run = ExportedModel.open(args.model, args.threads)
        if run.app != app.name:
            raise CheckpointError(f"--model {args.model}: exported from apps.{run.app}, not apps.{app.name}")
    else:
        run = Run.open(Path(args.run), app, "predict")
        run.method(args.device, args.precision)   # a bad device or precision: one error before anything is read
    files = pio.collect_images(args.inputs, skip=[out / sub for sub in pio.OUTPUT_FOLDERS])
    if (text := run.unfinished_note("predict")) is not None:
        print(f"note: {text}", file=sys.stderr, flush=True)
        if not run.finished:
            unfinished.append(run.finish_hint())
    thresholds = run.thresholds
    threshold = args.threshold if args.threshold is not None else thresholds.get("image")
    stems = pio.output_stems(files)
    planned = pio.planned_outputs(stems, masks=thresholds.get("pixel") is not None, maps=args.save_maps)
    pio.refuse_clashes(out, pio.clashes(out, planned, earlier) + (
        pio.branch_clashes(out, stems, earlier) if args.save_maps else []), earlier)
    if earlier is not None:
        earlier.remove()
    manifest = pio.Manifest(out, str(args.model or args.run))
    manifest.record([pio.CSV_NAME])
    rows: dict[int, dict[str, str]] = {}
    preds = run.iter_predict(files, threshold=threshold, device=args.device, batch_size=args.batch_size,
                             branches=args.save_maps, precision=args.precision)
    try:
        for k, pred in enumerate(preds):
            rows[k] = row = pio.write_prediction(out, manifest, stems[k], pred, thresholds, threshold, args.save_maps)
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


def cmd_export(app: App, args, state: TrainState, unfinished: list[str]) -> int:
    from .run import Run

    out = Path(args.out)
    Run.open(Path(args.run), app, "export").export(out, args.format)
    quoted = _quote(out)
    print(f"  predict: python -m apps.{app.name} predict --model {quoted} IMAGES --out OUT", flush=True)
    return 0


def cmd_components(app: App, args, state: TrainState, unfinished: list[str]) -> int:
    rows = app.components()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"apps.{app.name} default pipeline ({app.app_dir / 'pipeline.toml'}):")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"  {r['role']:<14} {r['kind']}/{r['name']}" + (f"  ({params})" if params else ""))
        if r["alternatives"]:
            print(f"  {'':<14} alternatives: {', '.join(r['alternatives'])}")
    print(f"swap one with --set pipeline.<role>.name=NAME; presets: {', '.join(presets(app.app_dir))}")
    return 0


VERBS = {"train": cmd_train, "test": cmd_test, "predict": cmd_predict, "export": cmd_export,
         "components": cmd_components}


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


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
