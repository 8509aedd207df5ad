"""Training a run from Python or the command line: the configuration of a new run or a resumed one, the run folder,
and what an interrupted command leaves behind. ``apps.<app>.train(...)`` and ``train`` on the command line both
call :func:`train`."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmad.core import CheckpointError, ConfigError

from .config import RESUME_KEYS, anchor_paths, check_config, load_config
from .runs import (
    config_edits,
    describe_edits,
    latest_run,
    load_checkpoint,
    new_run_dir,
    remove_stale_temporaries,
    write_config,
)
from .settings import read_section

if TYPE_CHECKING:
    from .app import App
    from .run import Run


@dataclass
class DataChoice:
    """A dataset named on the command line or in a call: ``spec`` ``KIND:PATH`` (or None: the configuration's),
    ``category`` and ``params`` (``KEY=VALUE`` items of ``[data.params]``)."""

    spec: str | None = None
    category: str | None = None
    params: Sequence[str] = ()

    def __bool__(self) -> bool:
        return bool(self.spec)

    def check(self) -> DataChoice | None:
        """Itself when it names a dataset, None when empty; a ConfigError for a category or parameters without a
        dataset (they belong to one)."""
        if self.spec:
            return self
        if self.category or self.params:
            raise ConfigError("--category and --data-param belong to --data (the dataset to evaluate on); give "
                              "--data KIND:PATH too")
        return None

    def apply(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with its ``[data]`` changed (a copy; what is not given changes nothing). Dataset options
        belong to a dataset kind: another kind starts without the configuration's."""
        import copy

        from ssmad.core.files import apply_overrides

        config = copy.deepcopy(config)
        sets = []
        if self.spec:
            if self.spec.split(":", 1)[0] != str(config["data"]["spec"]).split(":", 1)[0]:
                config["data"]["params"] = {}
            sets.append(f"data.spec={json.dumps(self.spec)}")
        if self.category:
            sets.append(f"data.category={json.dumps(self.category)}")
        for item in self.params:
            if "=" not in item:
                raise ConfigError(f"--data-param {item!r}: expected KEY=VALUE")
            sets.append(f"data.params.{item}")
        return apply_overrides(config, sets)


@dataclass
class TrainState:
    """What a training command has done so far, for the message of an interrupted one."""

    run_dir: Path | None = None
    model_mtime: int | None = -1     # model.pt's mtime when training started (None: absent; -1: not yet known)
    benchmark: Path | None = None    # the parent folder of a training of several categories

    def interrupted(self, app: str) -> str:
        """The rest of the "interrupted" line: what the run folder holds and the command that goes on."""
        if self.benchmark is not None:
            parent = shlex.quote(str(self.benchmark))
            return (f": the categories trained so far are kept in {parent}; continue with: python -m apps.{app} "
                    f"train --resume --out {parent}")
        if self.run_dir is None:
            return " before training started; nothing was written"
        run = shlex.quote(str(self.run_dir))
        ckpt, model = self.run_dir / "checkpoint.pt", self.run_dir / "model.pt"
        if model.is_file() and self.model_mtime != -1 and model.stat().st_mtime_ns != self.model_mtime:
            return f" after training: the model is in {model}; evaluate it with: python -m apps.{app} test --run {run}"
        if ckpt.is_file():
            return (f": the completed epochs are kept in {ckpt}; resume with: python -m apps.{app} train --resume "
                    f"--out {run}")
        return (f" before the first epoch completed: {self.run_dir} holds no checkpoint to resume; start the training "
                f"again")


@dataclass
class TrainOptions:
    """What ``train`` takes (the command line's flags by name). ``sets``: ``KEY=VALUE`` overrides (``--set``)."""

    data: DataChoice = field(default_factory=DataChoice)
    preset: str | None = None
    config: str | None = None
    sets: Sequence[str] = ()
    epochs: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    seed: int | None = None
    device: str = "auto"
    out: str | Path | None = None
    resume: bool = False
    test: bool = True


def new_config(app: App, opts: TrainOptions) -> dict[str, Any]:
    """The configuration of a new run: pipeline.toml, the preset (``demo`` without a dataset), ``--config``,
    ``--set`` and the flags, with its paths made absolute."""
    preset = opts.preset or (None if opts.data else "demo")
    overrides = list(opts.sets)
    for value, key in ((opts.epochs, "train.epochs"), (opts.batch_size, "train.batch_size"),
                       (opts.seed, "train.seed"), (opts.image_size, "data.image_size")):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = opts.data.apply(load_config(app.app_dir, preset, opts.config, overrides))
    check_config(config)
    if app.method_cls.settings is not None:   # a misspelt or bad [method] key: before any data is read
        read_section(app.method_cls.settings, config, "method")
    anchor_paths(config)   # stored absolute: test and --resume find the data and files from any directory
    return config


def edited_settings(app: str, run_dir: Path, stored: dict[str, Any], verb: str) -> list[str]:
    """Check ``RUN/config.toml`` against the configuration ``stored`` in the checkpoint that ``verb`` ("resume",
    "test" or "predict") uses. An edit of a key outside :data:`RESUME_KEYS` is a ConfigError naming the keys (nothing
    is then changed): the model was built and trained with the stored values. Edits of :data:`RESUME_KEYS` are
    returned as ``--set`` items, which a resume applies (before the command line's); ``test`` and ``predict`` do not
    read them."""
    edits = config_edits(run_dir, stored, app)
    other = {k: v for k, v in edits.items() if k not in RESUME_KEYS}
    if other and verb != "resume" and (run_dir / "checkpoint.pt").is_file():
        # a resume that extends a finished run rewrites config.toml with its first new checkpoint
        ongoing = config_edits(run_dir, load_checkpoint(run_dir / "checkpoint.pt", app)["config"], app)
        if all(k in RESUME_KEYS for k in ongoing):
            other = {}
    if other:
        fix = (f"--resume continues with the checkpoint's configuration and takes only {', '.join(RESUME_KEYS)} "
               f"from config.toml or --set" if verb == "resume" else
               f"{verb} uses the configuration the model was trained with")
        raise ConfigError(f"{run_dir / 'config.toml'} was edited after training: {describe_edits(other)}; {fix}. "
                          f"Undo the edit, or train a new run with it: python -m apps.{app} train --config "
                          f"{shlex.quote(str(run_dir / 'config.toml'))} --out NEW_FOLDER (nothing was changed in "
                          f"{shlex.quote(str(run_dir))})")
    sets = [f"{k}={json.dumps(new)}" for k, (_, new) in edits.items() if k in RESUME_KEYS and new is not None]
    for item in sets if verb == "resume" else []:
        print(f"note: --resume uses {item.replace('=', ' = ', 1)} from {run_dir / 'config.toml'}", file=sys.stderr,
              flush=True)
    return sets


def resumed_config(opts: TrainOptions, config: dict[str, Any], file_sets: Sequence[str] = ()) -> dict[str, Any]:
    """The stored configuration of a resumed run with ``epochs``, the ``sets`` of :data:`RESUME_KEYS` (after
    ``file_sets``, the same keys as edited in config.toml) and a dataset of the run's kind in a new place; any other
    change is a ConfigError, not silently ignored."""
    from ssmad.core.files import apply_overrides

    for name in ("category", "preset", "config", "batch_size", "image_size", "seed"):
        value = opts.data.category if name == "category" else getattr(opts, name)
        if value:
            raise ConfigError(f"--{name.replace('_', '-')}: --resume continues a run with the configuration it was "
                              f"trained with; start a new run (another --out) to change it")
    if opts.data.params and not opts.data.spec:
        raise ConfigError("--data-param: with --resume it belongs to --data (the run's data in a new place)")
    if opts.data.spec:   # the same data in a new place (checked against split.json before training continues)
        kind = str(config["data"]["spec"]).split(":", 1)[0]
        if opts.data.spec.split(":", 1)[0] != kind:
            raise ConfigError(f"--data {opts.data.spec}: --resume continues on the run's own data ({kind}:...); "
                              f"--data may only give its new place, as {kind}:PATH")
        config = opts.data.apply(config)
    for item in opts.sets:
        key = item.split("=", 1)[0].strip()
        if key not in RESUME_KEYS:
            raise ConfigError(f"--set {key}: --resume keeps the run's configuration; it may change only "
                              f"{', '.join(RESUME_KEYS)}")
    epochs = [] if opts.epochs is None else [f"train.epochs={opts.epochs}"]
    config = apply_overrides(config, [*file_sets, *opts.sets, *epochs])
    check_config(config)
    if opts.data.spec:
        anchor_paths(config)
    return config


def out_folder(path: Path, flag: str) -> Path:
    """``path`` as an output folder: a ConfigError when it is an existing file."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a folder")
    return path


def train(app: App, opts: TrainOptions, state: TrainState | None = None) -> Run | None:
    """Train a new run, or resume one (``opts.resume``), and evaluate it on its test split (``opts.test``); return
    the finished :class:`~apps.common.run.Run`. ``state`` records the run folder as soon as it is known (for the
    message of an interrupted command). Raises an SsmadError for whatever stops it, before anything is written where
    the cause can be seen beforehand.

    Launched by torchrun (even one process), every process trains one model together (:mod:`.distributed`); rank
    0 alone prints, writes the run folder and evaluates the run, and every rank returns the same trained model."""
    import contextlib
    import os

    from ssmad.core.device import resolve_device

    from . import distributed

    state = TrainState() if state is None else state
    if opts.out:
        out_folder(Path(opts.out), "--out")
    launched = distributed.launched()
    with contextlib.ExitStack() as stack:
        if not launched.main:   # the other ranks would print the same lines
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        device = distributed.start(resolve_device(opts.device), opts.device)
        stack.callback(distributed.finish)
        return _train(app, opts, state, device, launched.main)


def _train(app: App, opts: TrainOptions, state: TrainState, device, main: bool) -> Run | None:
    from . import distributed
    from .data import open_data
    from .engine import seed_everything
    from .engine import train as train_loop
    from .run import Run

    if opts.resume:
        run_dir = Path(opts.out) if opts.out else latest_run(app.name)
        if not run_dir.is_dir():
            raise CheckpointError(f"run folder not found: {run_dir}")
        state.run_dir = run_dir
        stale = remove_stale_temporaries(run_dir) if main else []
        if stale:
            print(f"note: removed {len(stale)} temporary file(s) that an interrupted run left in {run_dir}: "
                  f"{', '.join(stale)}", file=sys.stderr, flush=True)
        ckpt = load_checkpoint(run_dir / "checkpoint.pt", app.name)
        config = resumed_config(opts, ckpt["config"], edited_settings(app.name, run_dir, ckpt["config"], "resume"))
        done, epochs = int(ckpt["epoch"]), int(config["train"]["epochs"])
        if opts.epochs is not None and opts.epochs < done:
            raise ConfigError(f"--epochs {opts.epochs}: {run_dir} has already completed {done} epochs; give "
                              f"--epochs {done} or more to train longer (or leave it out)")
        if done >= epochs and (run_dir / "model.pt").is_file():
            try:
                load_checkpoint(run_dir / "model.pt", app.name)
            except CheckpointError as exc:   # damaged: fitted again from the last epoch's checkpoint
                print(f"note: {exc}; writing it again from {run_dir / 'checkpoint.pt'} (epoch {done})",
                      file=sys.stderr, flush=True)
            else:
                print(f"{run_dir} already finished: {done} of {epochs} epochs trained and model.pt written; nothing "
                      f"to do (raise --epochs to train longer)", flush=True)
                return Run.open(run_dir, app)
    else:
        config = new_config(app, opts)
        # one folder for every rank: the name of a new one holds the time, which rank 0 reads
        run_dir = distributed.broadcast(Path(opts.out) if opts.out else new_run_dir(app.name, config))
        if (run_dir / "checkpoint.pt").exists() or (run_dir / "model.pt").exists():
            raise CheckpointError(f"--out {run_dir}: already holds a run; use --resume to continue it or choose "
                                  "another folder (nothing was overwritten)")
    data = open_data(config, verify=True)   # a wrong path, layout or file fails here, before any model is built
    seed_everything(int(config["train"]["seed"]))     # the initial weights too: a run repeats with its seed
    method = app.method_cls(config, device)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    state.run_dir = run_dir
    if not opts.resume and main:   # a resumed run's config.toml is rewritten with its first checkpoint (engine.train)
        write_config(run_dir, config)
    print(f"run folder: {run_dir}", flush=True)
    model = run_dir / "model.pt"
    state.model_mtime = model.stat().st_mtime_ns if model.is_file() else None
    try:
        payload = train_loop(method, config, run_dir, resume=opts.resume, data=data)
    except BaseException:
        if not opts.resume and main:
            remove_unstarted(run_dir)
        raise
    run = Run(run_dir, app, payload)
    if not main:
        return run
    if opts.test and len(data.test) == 0:
        print(f"note: {config['data']['spec']} has no test images; the run is not evaluated", flush=True)
    elif opts.test:
        from .evaluate import evaluate_runs

        evaluate_runs(app, [run_dir], run_dir / "report", device, figures=8, method=method,
                      thresholds=payload["thresholds"])
    return run


#: what a new run's folder holds before its first epoch is saved: a failure then removes them (and the folder), so
#: the same command can run again once the cause is fixed (a new run refuses an existing folder)
UNSTARTED_FILES = ("config.toml", "split.json", "train.log")


def remove_unstarted(run_dir: Path) -> None:
    """Remove a new run's folder that holds only :data:`UNSTARTED_FILES` (nothing else: no checkpoint, no distilled
    model)."""
    import contextlib

    if not run_dir.is_dir() or any(f.name not in UNSTARTED_FILES for f in run_dir.iterdir()):
        return
    for name in UNSTARTED_FILES:
        (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()
