"""Evaluating finished runs on a test split: the seven metrics, each branch and defect type alone, the decisions at
the run's own threshold, heat-map figures; what ``test`` reports and :meth:`Run.evaluate` returns."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssmad.core import DataError

if TYPE_CHECKING:
    from .app import App
    from .run import Run
    from .training import DataChoice


def open_run_dataset(run_dir: Path, config: dict[str, Any], data: DataChoice | None, retry: str
                     ) -> tuple[dict[str, Any], Any]:
    """(config, dataset) that a finished run is evaluated on: its own data, or the dataset ``data`` names. The test
    split is checked against the run's ``split.json`` (a DataError when training images are now test images; other
    differences are printed as notes). When the run's own data is missing, the DataError ends with ``retry``: the
    command that gives its new place."""
    from .data import open_data
    from .split import check_split

    config = config if data is None else data.apply(config)
    try:
        dataset = open_data(config)
    except DataError as exc:
        if data is not None:
            raise
        raise DataError(f"{exc} (the data {run_dir} was trained on; if it moved, or the run was trained in another "
                        f"directory before apps 0.9.0, give its place: {retry})") from None
    for note in check_split(run_dir, dataset):
        print(f"note: {note}", file=sys.stderr, flush=True)
    return config, dataset


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


def evaluate_runs(app: App, runs: Sequence[Run | Path], out: Path | None, device, figures: int = 8,
                  batch_size: int | None = None, method=None, data: DataChoice | None = None, thresholds=None,
                  quiet: bool = False, precision: str | None = None) -> dict[str, dict[str, float]]:
    """Test each run on its test split (or on the dataset ``data`` names) and write the report to ``out`` (None:
    nothing written); return the metrics per category plus ``mean``. ``method`` and ``thresholds``: the model of
    the one run just trained and its decision thresholds (else read from the run); ``precision``: of the networks
    (default each run's). ``quiet``: print nothing but
    notes."""
    from ssmad.core.device import resolve_device
    from ssmad.scoring import evaluate
    from ssmad.scoring.report import decisions_at, mean_row

    from .inference import infer
    from .run import Run

    device = resolve_device(device) if isinstance(device, str) else device
    tables: dict[str, dict[str, dict[str, float]]] = {"metrics": {}, "branches": {}, "by_type": {}, "decisions": {}}
    timing: dict[str, Any] = {}
    quantiles: set[float] = set()
    notes: list[str] = []
    for item in runs:
        run = item if isinstance(item, Run) else Run.open(item, app, "test")
        run_thresholds, this_method = thresholds, method
        if this_method is None or len(runs) > 1:
            this_method = run.method(device, precision)
            if (text := run.unfinished_note("test")) is not None:
                print(f"note: {text}", file=sys.stderr, flush=True)
            run_thresholds = run.thresholds
        config, dataset = open_run_dataset(
            run.path, run.config, data,
            f"python -m apps.{app.name} test --run {shlex.quote(str(run.path))} --data KIND:PATH")
        if len(dataset.test) == 0:
            raise DataError(f"{config['data']['spec']}: the test split is empty; nothing to evaluate")
        bs = batch_size or int(config["train"]["eval_batch_size"])
        with run.quiet():
            scores, maps, branches, info = infer(this_method, dataset.test, batch_size=bs, progress="test")
        labels = np.array(dataset.test.labels, dtype=int)
        masks = info.pop("masks")
        name = dataset.category or str(config["data"]["spec"]).split(":", 1)[0]
        if name in tables["metrics"]:
            name = f"{name} ({run.path.name})"
        tables["metrics"][name] = evaluate(labels, scores, masks, maps)
        if (note := this_method.map_note()) is not None:
            notes.append(note if len(runs) == 1 else f"{name}: {note}")
        tables["by_type"].update(by_defect_type(name, dataset.test.defect_types, labels, scores, masks, maps))
        for branch, bmaps in branches.items():  # e.g. VMPFD-AD's local-only and global-only maps
            bscores = this_method.branch_score(bmaps)
            tables["branches"][f"{name} [{branch} only]"] = evaluate(labels, bscores, masks, bmaps)
        timing[name] = {"inference_s_per_image": info["per_image_s"], "batch_size": bs, "device": str(device)}
        threshold = (run_thresholds or {}).get("image")
        if threshold is not None:
            tables["decisions"][name] = decisions_at(labels, scores, threshold)
            quantiles.add(float(config["train"].get("threshold_quantile", 0.99)))
        if out is not None and figures > 0:
            _figures(out, figures, name, dataset, maps, masks, labels, scores, threshold)
    if out is not None:
        _write_report(app, out, tables, timing, notes, quantiles, quiet)
    return {**tables["metrics"], "mean": mean_row(tables["metrics"])}


def _figures(out: Path, k: int, name: str, dataset, maps, masks, labels, scores, threshold) -> None:
    """The ``k`` most informative test images of one category as heat-map figures in ``out/figures/NAME``."""
    from ssmad.scoring.report import save_worst

    from .predict_io import output_stems

    fig_dir = out / "figures" / name.replace(" ", "_").replace("/", "_")
    names = output_stems([Path(p) for p in dataset.test.paths])   # the figure adds ".png"
    save_worst(fig_dir, TestImages(dataset.test), maps, masks, labels, scores, names, k=k, threshold=threshold)


def _write_report(app: App, out: Path, tables, timing, notes: list[str], quantiles: set[float],
                  quiet: bool) -> None:
    """``out``: metrics (Markdown and JSON), timing, the branches and defect types alone, the decisions."""
    from ssmad.core.files import atomic_write_text
    from ssmad.scoring.report import write_decisions, write_metrics

    def show(path: Path) -> None:
        if not quiet:
            print(path.read_text())

    title = f"apps.{app.name}" + (f" ({'; '.join(notes)})" if notes else "")
    json_path, md_path = write_metrics(out, tables["metrics"], title=title)
    atomic_write_text(out / "timing.json", json.dumps(timing, indent=2))
    show(md_path)
    if tables["branches"]:  # each branch map alone, from the same model (its own table: not in the mean above)
        show(write_metrics(out / "branches", tables["branches"], title=f"apps.{app.name}: branches alone")[1])
    if tables["by_type"]:  # each defect type against the normal test images (which types the model misses)
        show(write_metrics(out / "by_type", tables["by_type"],
                           title=f"apps.{app.name}: each defect type against all normal test images")[1])
    if tables["decisions"]:  # what the run's own image threshold (the one predict uses) decides on the test images
        q = ", ".join(f"{x:g}" for x in sorted(quantiles))
        show(write_decisions(
            out, tables["decisions"], title=f"apps.{app.name}: decisions at the run's image threshold",
            note=f"An image is flagged when its score is above the threshold, as `predict` decides. The threshold is "
                 f"the {q} quantile of the scores of the normal images held out from training (not the test "
                 f"images); `predict --threshold` sets another.")[1])
    if not quiet:
        print(f"report: {md_path}  (metrics JSON {json_path}, figures in {out / 'figures'})", flush=True)
