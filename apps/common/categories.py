"""Training every category of a dataset in one command: ``train --data mvtec:ROOT --category all`` (or ``--category
carpet,grid``) trains one run per category into a benchmark folder (:mod:`apps.common.benchmark`) and writes its
summary. A category that fails is a row with its error and the others go on; ``--resume`` continues the unfinished
categories only. With ``--devices N`` (default: every GPU when there are several) categories train in parallel, one
spawned process per device, each with its own GPU or its share of the CPU cores.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmad.core import ConfigError, SsmadError, fmt_time, suggest

from .benchmark import SUMMARY_NAME, Benchmark, several_categories
from .training import DataChoice, TrainOptions

if TYPE_CHECKING:
    from .app import App


def resolve_categories(app: App, opts: TrainOptions, asked: str | Sequence[str]) -> list[str]:
    """The categories ``asked`` names (``all``, ``"a,b"`` or a list) among those of ``opts.data``'s dataset; a
    ConfigError for a dataset without categories or a name it does not have (before anything is written)."""
    from .data import open_data
    from .training import new_config

    config = new_config(app, dataclasses.replace(opts, data=DataChoice(opts.data.spec, None, opts.data.params)))
    config["data"].pop("category", None)
    available = list(open_data(config).categories)
    spec = config["data"]["spec"]
    if not available:
        raise ConfigError(f"--category {asked if isinstance(asked, str) else ','.join(asked)}: {spec} has no "
                          f"categories; train it without --category")
    names = ([c.strip() for c in asked.split(",")] if isinstance(asked, str) else [str(c) for c in asked])
    if names == ["all"]:
        return available
    unknown = [c for c in names if c not in available]
    if unknown or not names or "" in names:
        raise ConfigError(f"--category: {spec} has no category {(unknown or [''])[0]!r}; available: "
                          f"{suggest((unknown or [''])[0], available)} (or all)")
    return list(dict.fromkeys(names))


def train_categories(app: App, opts: TrainOptions, devices: int | None = None, state=None) -> Benchmark:
    """Train (or with ``opts.resume``, continue) one run per category and write the summary; returns the
    :class:`Benchmark`. ``opts.data.category``: ``all``, ``"a,b"`` or a list; with ``opts.resume``, ``opts.out`` is
    the parent folder and the categories are those it was started with. ``devices``: parallel processes (default
    every GPU when there are several, else one); ``state``: a :class:`~apps.common.training.TrainState` that learns
    the parent folder (for the message of an interrupted command). Errors of one category are its row; a
    ConfigError or DataError for what stops all of them (before anything is written)."""
    from .distributed import launched
    from .runs import new_run_dir

    if launched().grouped:
        raise ConfigError("--category: several categories train one after another (or --devices N at once), not "
                          "under torchrun, whose processes train one model together")
    if opts.resume:
        if not opts.out:
            raise ConfigError("--resume of a benchmark: give its parent folder with --out")
        bench = Benchmark.open(opts.out, app)
        if opts.data.category is not None and several_categories(opts.data.category) and \
                resolve_categories(app, bench.options(bench.categories[0], resume=False),
                                   opts.data.category) != bench.categories:
            raise ConfigError(f"--category {opts.data.category}: {opts.out} was started with the categories "
                              f"{', '.join(bench.categories)}; --resume continues those")
    else:
        categories = resolve_categories(app, opts, opts.data.category)
        parent = Path(opts.out) if opts.out else new_run_dir(
            app.name, {"data": {"spec": opts.data.spec or "demo", "category": "all"}})
        bench = Benchmark.create(parent, app, opts, categories)
    if state is not None:
        state.benchmark = bench.path
    slots = device_slots(opts.device, devices)
    print(f"benchmark: {len(bench.categories)} categories ({', '.join(bench.categories)}) in {bench.path}"
          + (f", {len(slots)} at a time on {', '.join(dict.fromkeys(slots))}" if len(slots) > 1 else ""),
          flush=True)
    work = bench.todo(opts.epochs if opts.resume else None)
    if len(slots) > 1:
        _parallel(app, bench, work, slots)
    else:
        _sequential(app, bench, work)
    bench.write_summary()
    if bench.failed:
        print(f"{len(bench.failed)} of {len(bench.categories)} categories failed: {', '.join(bench.failed)} "
              f"(see {bench.path / (SUMMARY_NAME + '.md')}); continue with: python -m apps.{app.name} train "
              f"--resume --out {bench.path}", file=sys.stderr, flush=True)
    return bench


def device_slots(device: str, devices: int | None) -> list[str]:
    """The device of each parallel process: one GPU each (``cuda:0`` …), or the CPU for each; a ConfigError for
    more GPUs than there are or a count below 1."""
    import torch

    from ssmad.core.device import resolve_device

    if devices is not None and devices < 1:
        raise ConfigError(f"--devices {devices}: expected 1 or more")
    d = resolve_device(device)
    if d.type != "cuda":
        return ["cpu"] * (devices or 1)
    count = torch.cuda.device_count()
    if d.index is not None:
        if (devices or 1) > 1:
            raise ConfigError(f"--device {device} names one GPU; --devices {devices} trains on several: give "
                              f"--device cuda")
        return [str(d)]
    n = devices or count
    if n > count:
        raise ConfigError(f"--devices {n}: this machine has {count} GPU(s)")
    return [f"cuda:{i}" for i in range(n)]


def _run_category(app: App, bench: Benchmark, category: str, opts: TrainOptions | None) -> None:
    """Train (when ``opts``) and evaluate one category in this process; its outcome is recorded."""
    from .evaluate import evaluate_runs
    from .run import Run
    from .training import train

    t0 = time.perf_counter()
    try:
        if opts is not None:
            train(app, opts)
        test = bench.record["options"]["test"]
        if test and not (bench.run_dir(category) / "report" / "metrics.json").is_file():
            run = Run.open(bench.run_dir(category), app, "test")
            evaluate_runs(app, [run], run.path / "report", bench.record["options"]["device"])
        bench.collect(category, seconds=time.perf_counter() - t0)
    except SsmadError as exc:
        print(f"error: {category}: {exc}", file=sys.stderr, flush=True)
        bench.collect(category, error=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:   # a bug in one category's run is its row, the others still train
        traceback.print_exc()
        bench.collect(category, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)


def _sequential(app: App, bench: Benchmark, work) -> None:
    for k, (category, opts) in enumerate(work, 1):
        what = "evaluating" if opts is None else ("resuming" if opts.resume else "training")
        print(f"== [{k}/{len(work)}] {category}: {what} in {bench.run_dir(category)}", flush=True)
        _run_category(app, bench, category, opts)


def _parallel(app: App, bench: Benchmark, work, slots: list[str]) -> None:
    """Each category in a process of its own (spawned), at most one per slot at a time; its output goes to
    ``PARENT/logs/CATEGORY.log``, its outcome is read from its run folder and exit code."""
    import multiprocessing as mp
    import os

    ctx = mp.get_context("spawn")
    logs = bench.path / "logs"
    logs.mkdir(exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(slots))
    queue = list(work)
    running: dict[Any, tuple[str, str, float, Any]] = {}   # sentinel -> (category, slot, start, process)
    free = list(slots)
    try:
        _schedule(app, bench, queue, running, free, ctx, logs, threads)
    except BaseException:   # Ctrl-C or a failure here: the categories in training stop at once, kill-safe
        for _, _, _, p in running.values():
            p.terminate()
        for _, _, _, p in running.values():
            p.join()
        raise


def _schedule(app: App, bench: Benchmark, queue, running, free, ctx, logs: Path, threads: int) -> None:
    from multiprocessing.connection import wait

    while queue or running:
        while queue and free:
            category, opts = queue.pop(0)
            slot = free.pop(0)
            log = logs / f"{category}.log"
            p = ctx.Process(target=_worker, args=(app.name, str(bench.path), category, opts, slot, threads,
                                                  str(log)), name=f"ssmad-{category}")
            p.start()
            running[p.sentinel] = (category, slot, time.perf_counter(), p)
            print(f"{category}: started on {slot} (log {log})", flush=True)
        for sentinel in wait(list(running)):
            category, slot, t0, p = running.pop(sentinel)
            p.join()
            free.append(slot)
            error = None if p.exitcode == 0 else _last_error(logs / f"{category}.log", p.exitcode)
            o = bench.collect(category, error=error, seconds=time.perf_counter() - t0)
            print(f"{category}: {o.status} in {fmt_time(o.seconds or 0)}" + (f": {o.error}" if o.error else ""),
                  flush=True)


def _worker(app_name: str, parent: str, category: str, opts: TrainOptions | None, device: str, threads: int,
            log: str) -> None:
    """One category in a spawned process: its own device (and ``threads`` CPU threads), its output in ``log``;
    exit code 0, or 2 with the error as the log's last line."""
    import os

    import torch

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    torch.set_num_threads(threads)
    from .app import app_named

    app = app_named(app_name)
    bench = Benchmark.open(parent, app)
    bench.record["options"]["device"] = device
    if opts is not None:
        opts = dataclasses.replace(opts, device=device)
    _run_category(app, bench, category, opts)
    sys.stdout.flush()
    sys.exit(0 if bench.outcomes[category].status != "failed" else 2)


def _last_error(log: Path, code: int) -> str:
    """The error a category's process printed last (its log's last ``error:`` line), or its exit code."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ").removeprefix(f"{log.stem}: ")
    return f"its process ended with exit code {code} (see {log})"


__all__ = ["device_slots", "resolve_categories", "train_categories"]
