"""A benchmark folder: one run per category of a dataset under one parent folder, and one summary of them
(:mod:`apps.common.categories` trains them: ``train --data mvtec:ROOT --category all`` or ``--category carpet,grid``).

    PARENT/benchmark.json     what was asked: the app, the data, the categories, the training options
    PARENT/CATEGORY/          each category's run folder (its own report in CATEGORY/report)
    PARENT/logs/CATEGORY.log  what a category trained in parallel printed (``--devices N``)
    PARENT/summary.md|.json   one row per category (its report's metrics) and their mean; failed ones say why

A category that fails is a row with its error; ``test --run PARENT`` evaluates every category's run again
(:meth:`Benchmark.test`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmad.core import ConfigError, SsmadError
from ssmad.core.files import atomic_write_text

from .training import DataChoice, TrainOptions

if TYPE_CHECKING:
    from .app import App

BENCHMARK_FILE = "benchmark.json"
SUMMARY_NAME = "summary"
#: the options of :class:`TrainOptions` a benchmark keeps for the categories it has not started yet
KEPT_OPTIONS = ("preset", "config", "sets", "epochs", "batch_size", "image_size", "seed", "device", "test")


def is_benchmark(path: Path) -> bool:
    """Whether ``path`` is a benchmark's parent folder (it holds :data:`BENCHMARK_FILE`)."""
    return (Path(path) / BENCHMARK_FILE).is_file()


def several_categories(category: str | Sequence[str] | None) -> bool:
    """Whether ``--category`` names more than one run: ``all``, a comma-separated list or a Python list."""
    if category is None:
        return False
    if isinstance(category, str):
        return category.strip() == "all" or "," in category
    return True


@dataclasses.dataclass
class Outcome:
    """One category of a benchmark: ``status`` "ok" (trained and evaluated), "trained" (not evaluated), "failed"
    (``error`` says why) or "pending" (not started); ``metrics``: its report's row."""

    category: str
    status: str = "pending"
    error: str | None = None
    metrics: dict[str, float] | None = None
    seconds: float | None = None


class Benchmark:
    """A benchmark's parent folder: :attr:`path`, the :attr:`categories` asked for, each one's :class:`Outcome`."""

    def __init__(self, path: Path, app: App, record: dict[str, Any]) -> None:
        self.path, self.app, self.record = Path(path), app, record
        self.outcomes = {c: Outcome(c) for c in record["categories"]}

    @property
    def categories(self) -> list[str]:
        return list(self.record["categories"])

    @property
    def failed(self) -> list[str]:
        return [c for c, o in self.outcomes.items() if o.status == "failed"]

    def run_dir(self, category: str) -> Path:
        return self.path / category

    @classmethod
    def create(cls, path: Path, app: App, opts: TrainOptions, categories: list[str]) -> Benchmark:
        """A new benchmark folder (a ConfigError when ``path`` already holds runs or another benchmark)."""
        if path.is_dir() and any(path.iterdir()):
            raise ConfigError(f"--out {path}: is not empty; a benchmark starts in a new folder (use --resume to "
                              f"continue the one it holds)")
        record = {"app": app.name, "data": opts.data.spec, "params": list(opts.data.params),
                  "categories": categories, "created": _dt.datetime.now().isoformat(timespec="seconds"),
                  "options": {k: _plain(getattr(opts, k)) for k in KEPT_OPTIONS}}
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / BENCHMARK_FILE, json.dumps(record, indent=2) + "\n")
        return cls(path, app, record)

    @classmethod
    def open(cls, path: str | Path, app: App) -> Benchmark:
        """The benchmark in ``path``; a CheckpointError when it is not one of ``app``'s."""
        from ssmad.core import CheckpointError

        path = Path(path)
        try:
            record = json.loads((path / BENCHMARK_FILE).read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: not a benchmark folder (no {BENCHMARK_FILE})") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path / BENCHMARK_FILE}: cannot read: {exc}") from None
        if record.get("app") != app.name:
            raise CheckpointError(f"{path}: a benchmark of apps.{record.get('app')}, not apps.{app.name}")
        return cls(path, app, record)

    def options(self, category: str, resume: bool, epochs: int | None = None) -> TrainOptions:
        """The :class:`TrainOptions` of one category's run (a resume of it when ``resume``)."""
        o = self.record["options"]
        out = self.run_dir(category)
        if resume:
            return TrainOptions(DataChoice(), out=out, resume=True, epochs=epochs, device=o["device"],
                                test=o["test"])
        kept = {k: (tuple(v) if k == "sets" else v) for k, v in o.items()}
        if epochs is not None:
            kept["epochs"] = epochs
        return TrainOptions(DataChoice(self.record["data"], category, tuple(self.record["params"])), out=out,
                            **kept)

    def todo(self, epochs: int | None = None) -> list[tuple[str, TrainOptions | None]]:
        """(category, its options) of each category to train: None for a finished one (nothing to train; it is
        evaluated when it has no report yet)."""
        out = []
        for c in self.categories:
            d = self.run_dir(c)
            done = (d / "model.pt").is_file() and epochs is None
            out.append((c, None if done else self.options(c, (d / "checkpoint.pt").is_file(), epochs)))
        return out

    # -- results ------------------------------------------------------------------------------------------
    def collect(self, category: str, error: str | None = None, seconds: float | None = None) -> Outcome:
        """The outcome of one category from its run folder (its report's row), or failed with ``error``."""
        o = self.outcomes[category]
        o.seconds = seconds if seconds is not None else o.seconds
        d = self.run_dir(category)
        if error is not None:
            o.status, o.error, o.metrics = "failed", error, None
        elif (d / "report" / "metrics.json").is_file():
            o.status, o.error, o.metrics = "ok", None, _report_row(d / "report")
        elif (d / "model.pt").is_file():
            o.status, o.error, o.metrics = "trained", None, None
        else:
            o.status, o.error = "failed", o.error or f"{d} holds no trained model"
        return o

    def write_summary(self, out: Path | None = None, quiet: bool = False) -> Path:
        """``summary.md`` and ``summary.json`` in ``out`` (default the parent folder): the paper's table (a row per
        category, the seven metrics, their mean over the categories evaluated) and the categories that failed."""
        from ssmad.scoring.report import mean_row, metrics_markdown

        out = self.path if out is None else Path(out)
        rows = {c: o.metrics for c, o in self.outcomes.items() if o.metrics is not None}
        spec = self.record["data"]
        title = f"apps.{self.app.name} on {spec}: {len(rows)} of {len(self.outcomes)} categories evaluated"
        md = metrics_markdown(rows, title) if rows else f"# {title}\n"
        problems = [o for o in self.outcomes.values() if o.status != "ok"]
        if problems:
            md += "\n| category | status | error |\n|---|---|---|\n" + "".join(
                f"| {o.category} | {o.status} | {(o.error or '').replace('|', '/')} |\n" for o in problems)
        doc = {"app": self.app.name, "data": spec, "title": title,
               "categories": {c: dataclasses.asdict(o) for c, o in self.outcomes.items()},
               "mean": _finite(mean_row(rows)) if rows else {}, "failed": self.failed}
        for o in doc["categories"].values():
            o["metrics"] = _finite(o["metrics"]) if o["metrics"] is not None else None
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"{SUMMARY_NAME}.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
        md_path = atomic_write_text(out / f"{SUMMARY_NAME}.md", md)
        if not quiet:
            print(md, flush=True)
            print(f"summary: {md_path} (JSON {out / (SUMMARY_NAME + '.json')})", flush=True)
        return md_path

    def test(self, device: Any = "auto", out: str | Path | None = None, **kwargs: Any) -> Benchmark:
        """Evaluate every category's run again (each report in ``RUN/report``, or ``out/CATEGORY`` with the
        summary in ``out``); a category that cannot be evaluated is a failed row. ``kwargs``: those of
        :func:`apps.common.evaluate.evaluate_runs` (figures, batch_size, data, precision)."""
        from .evaluate import evaluate_runs
        from .run import Run

        out = None if out is None else Path(out)
        for c in self.categories:
            print(f"== {c}", flush=True)
            try:
                run = Run.open(self.run_dir(c), self.app, "test")
                report = (out / c) if out is not None else self.run_dir(c) / "report"
                evaluate_runs(self.app, [run], report, device, **kwargs)
                o = self.outcomes[c]
                o.status, o.error, o.metrics = "ok", None, _report_row(report)
            except SsmadError as exc:
                self.collect(c, error=str(exc))
                print(f"error: {c}: {exc}", file=sys.stderr, flush=True)
        self.write_summary(out)
        return self

    def __repr__(self) -> str:
        return f"Benchmark({str(self.path)!r}, {len(self.categories)} categories, {len(self.failed)} failed)"


def _report_row(report: Path) -> dict[str, float]:
    """The one row of a single run's report folder (``metrics.json``)."""
    from ssmad.scoring.report import read_metrics

    return next(iter(read_metrics(report / "metrics.json")["categories"].values()))


def wants_benchmark(category: str | Sequence[str] | None, resume: bool, out: str | Path | None) -> bool:
    """Whether a ``train`` call trains a benchmark: several categories asked for, or a resume of a benchmark
    folder."""
    return several_categories(category) or (resume and out is not None and is_benchmark(Path(out)))


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _finite(row: dict[str, float]) -> dict[str, float | None]:
    import math

    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


__all__ = ["BENCHMARK_FILE", "Benchmark", "Outcome", "is_benchmark", "several_categories", "wants_benchmark"]
