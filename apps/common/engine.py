"""The training loop and batched inference shared by the apps."""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssmad.core import ConfigError, DataError, TrainingError
from ssmad.core.files import atomic_write_text

from .data import Images, LazyImages, TrainItems, loader, open_data, split_validation
from .method import Method
from .runs import load_checkpoint, save_checkpoint, write_config, write_history


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random generator a training step may draw from (torch's CPU and CUDA ones, numpy's and Python's global
    ones), in a form ``torch.load(weights_only=True)`` reads back: a resumed run continues their sequences."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (a CUDA state only where the same number of GPUs is visible)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order: a function of (seed, epoch) alone, so a resumed run shuffles each
    epoch as the uninterrupted run does."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def log(run_dir: Path | None, line: str) -> None:
    print(line, flush=True)
    if run_dir is not None:
        with open(run_dir / "train.log", "a") as fh:
            fh.write(line + "\n")


def fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta(seconds_to_last_epoch: float, budget_left_s: float, t: dict[str, Any], epochs: int) -> str:
    """The progress line's time to the end the run will reach: its last epoch, or ``train.max_minutes`` when the
    budget (``budget_left_s`` of it left; ignored when there is none) runs out first; says which."""
    if t.get("max_minutes") and budget_left_s < seconds_to_last_epoch:
        return f"ETA {fmt_time(budget_left_s)} (train.max_minutes = {t['max_minutes']:g})"
    return f"ETA {fmt_time(seconds_to_last_epoch)} (epoch {epochs})"


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(method: Method, config: dict[str, Any], run_dir: Path, resume: bool = False, data=None) -> dict[str, Any]:
    """Train ``method``; checkpoint every epoch; return the final payload (also written to ``model.pt``)."""
    t = config["train"]
    seed = int(t["seed"])
    seed_everything(seed)
    data = open_data(config, verify=True) if data is None else data
    train_idx, val_idx = split_validation(data.train, float(t["val_fraction"]), seed)
    if len(train_idx) < 2:   # before prepare, which may distil a feature extractor for minutes
        raise DataError(f"{config['data']['spec']}: {len(train_idx)} training image(s) after holding out "
                        f"{len(val_idx)} for validation; training needs at least 2 normal images")
    if resume:   # before anything is written: a leaked image stops the resume with the run as it was
        for note in check_resumed_split(run_dir, data, train_idx, val_idx):
            print(f"note: {note}", file=sys.stderr, flush=True)
    selector = Selector(method, config, run_dir, data.train, val_idx)
    method.prepare(run_dir, data.train, train_idx)
    if not resume:   # a resumed run's config.toml is rewritten with its first checkpoint (below)
        write_config(run_dir, config)
    write_split(run_dir, data, train_idx, val_idx)
    items = TrainItems(data.train, train_idx, method.train_item, seed)
    batch_size = min(int(t["batch_size"]), len(items))
    # full batches only: the incomplete last one is dropped (the shuffle changes it every epoch), so batch norm
    # never sees a batch of one image
    dl = loader(items, batch_size, shuffle=True, workers=int(t["workers"]), seed=seed, drop_last=True)
    optimizer = method.make_optimizer()
    epochs = int(t["epochs"])
    start_epoch, history, train_seconds = 0, [], 0.0
    ckpt_path = run_dir / "checkpoint.pt"
    if resume:
        ckpt = load_checkpoint(ckpt_path, method.app)
        method.load_state_dict(ckpt["state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
        train_seconds = float(ckpt.get("train_seconds", 0.0))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        else:   # a checkpoint of apps < 0.12 holds torch's generator only
            torch.set_rng_state(ckpt["torch_rng"])
        # history.jsonl as the checkpoint has it: a kill between the two writes of an epoch leaves them apart
        write_history(run_dir, history)
        selector.resume(ckpt.get("best"))
        cut = bool(history) and start_epoch < history[-1]["epoch"] < start_epoch + 1
        again = f" (epoch {start_epoch + 1}, cut short by train.max_minutes, runs again in full)" if cut else ""
        log(run_dir, f"resumed from {ckpt_path} after epoch {start_epoch}/{epochs}{again}")
    log(run_dir, f"data: {config['data']['spec']} category={data.category or '-'}: {len(train_idx)} train, "
                 f"{len(val_idx)} validation, {len(data.test)} test images")
    log(run_dir, f"model: {method.describe()}; device {method.device}; {epochs} epochs x {len(dl)} steps")
    steps_total = epochs * len(dl)
    steps_done = start_epoch * len(dl)
    t_start = time.perf_counter()
    steps_at_start = steps_done
    last_print = 0.0
    interval = float(t.get("log_every_s", 10.0))
    budget_s = float(t.get("max_minutes", 0)) * 60  # 0: no limit; counts this session's training time only
    out_of_time = False
    for epoch in range(start_epoch, epochs):
        items.epoch = epoch
        dl.generator.manual_seed(epoch_seed(seed, epoch))
        at_epoch_start = rng_state()   # what a checkpoint of an epoch cut short resumes from
        method.train(True)
        sums: dict[str, float] = {}
        t_epoch = time.perf_counter()
        for step, batch in enumerate(dl):
            batch = _to(batch, method.device)
            losses = method.train_step(batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())
                where = f"; the checkpoint of epoch {epoch} is kept in {ckpt_path}" if ckpt_path.exists() else ""
                raise TrainingError(f"loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1} "
                                    f"({terms}); lower train.lr or check the data{where}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps_done += 1
            now = time.perf_counter()
            if now - last_print >= interval or step == len(dl) - 1:
                last_print = now
                rate = (now - t_start) / max(1, steps_done - steps_at_start)
                terms = " ".join(f"{k} {v / (step + 1):.4f}" for k, v in sums.items())
                log(run_dir, f"epoch {epoch + 1}/{epochs} step {step + 1}/{len(dl)} {terms} "
                             f"| {eta(rate * (steps_total - steps_done), budget_s - (now - t_start), t, epochs)}")
            if budget_s and now - t_start >= budget_s:
                out_of_time = True
                log(run_dir, f"train.max_minutes = {t['max_minutes']} reached at epoch {epoch + 1}, step "
                             f"{step + 1}/{len(dl)}: training stops here")
                break
        train_seconds += time.perf_counter() - t_epoch
        n_steps = step + 1
        record = {"epoch": epoch + 1 if not out_of_time else round(epoch + n_steps / len(dl), 3),
                  **{k: v / n_steps for k, v in sums.items()}, "seconds": round(time.perf_counter() - t_epoch, 2)}
        selector.after_epoch(record)
        history.append(record)
        # "epoch" counts completed epochs: one cut short by the time budget runs again in full on --resume
        done = epoch + 1 if n_steps == len(dl) else epoch
        rng = rng_state() if done == epoch + 1 else at_epoch_start
        save_checkpoint(ckpt_path, {"app": method.app, "config": config, "state": method.state_dict(),
                                    "optimizer": optimizer.state_dict(), "epoch": done, "history": history,
                                    "train_seconds": train_seconds, "torch_rng": rng["torch"], "rng": rng,
                                    "best": selector.best})
        # after the checkpoint: a kill in between leaves history.jsonl one record short, which a resume rewrites
        with open(run_dir / "history.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if resume:
            write_config(run_dir, config)   # once the checkpoint holds it: both say the same after any kill
        if out_of_time:
            break
    # the selected epoch's model, statistics on normal validation images, then decision thresholds
    method.train(False)
    selected = selector.restore(history)
    val_images = [data.train[i].image for i in val_idx]
    for line in method.after_training(val_images, train_images=LazyImages(data.train, train_idx)) or []:
        log(run_dir, line)
    thresholds = {}
    if val_images:
        scores, maps, _, _ = infer(method, data.train, val_idx, batch_size=int(t["eval_batch_size"]))
        thresholds = decision_thresholds(scores, maps, float(t.get("threshold_quantile", 0.99)))
    epochs_done = history[-1]["epoch"] if history else 0
    payload = {"app": method.app, "config": config, "state": method.state_dict(), "epoch": epochs_done,
               "history": history, "train_seconds": train_seconds, "thresholds": thresholds,
               "n_train": len(train_idx), "n_val": len(val_idx), "selected_epoch": selected}
    save_checkpoint(run_dir / "model.pt", payload)
    write_config(run_dir, config)
    kept = "" if selected == epochs_done else f" (the model of epoch {selected}, train.select = best)"
    log(run_dir, f"trained {epochs_done} epochs in {fmt_time(train_seconds)}; model{kept} written to "
                 f"{run_dir / 'model.pt'}")
    return payload


SPLIT_FILE = "split.json"


def write_split(run_dir: Path, data, train_idx: list[int], val_idx: list[int]) -> None:
    """The run's images by use (``split.json``: train, validation, test), for the user and for :func:`check_split`.
    Datasets whose samples have no file paths (none so far) write nothing."""
    train_paths = getattr(data.train, "paths", None)
    test_paths = getattr(data.test, "paths", None)
    if train_paths is None or test_paths is None:
        return
    split = {"root": getattr(data, "root", None), "train": [train_paths[i] for i in train_idx],
             "validation": [train_paths[i] for i in val_idx], "test": list(test_paths)}
    atomic_write_text(run_dir / SPLIT_FILE, json.dumps(split, indent=1) + "\n")


def _stored_split(path: Path, data) -> dict[str, set[str]]:
    """The image sets of ``split.json`` (train, validation, test), each path where it is now when the dataset moved
    (the stored root replaced by the dataset's). Raises OSError, ValueError, KeyError or TypeError when unreadable."""
    split = json.loads(path.read_text())
    old_root, new_root = split.get("root"), getattr(data, "root", None)

    def now(p: str) -> str:
        return _moved(p, Path(old_root), Path(new_root)) if old_root and new_root else str(Path(p))

    return {key: {now(p) for p in split[key]} for key in ("train", "validation", "test")}


def _read_split(run_dir: Path, data) -> tuple[dict[str, set[str]] | None, list[str]]:
    """(:func:`_stored_split` of the run, notes): (None, []) for a run without ``split.json`` or a dataset without
    file paths, (None, [why]) when it cannot be read."""
    path = run_dir / SPLIT_FILE
    if not path.is_file() or getattr(data.test, "paths", None) is None:
        return None, []
    try:
        return _stored_split(path, data), []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, [f"{path}: unreadable ({exc}); the test split was not compared with training time's"]


def check_split(run_dir: Path, data) -> list[str]:
    """Compare the test split as the dataset lists it now with the one the run was trained with (``split.json``;
    runs without it are not checked; a dataset that moved is followed by the root stored with it). A dataset split
    by a seed (a ``folder`` of normal images without ``test_normal``, ``mtd``, ``nanotwice``) is split again from
    its current listing: images added to or removed from the folder move others between training and test. An
    image the run trained on (or held out) that is now a test image is a DataError; any other difference is
    returned as a note."""
    split, notes = _read_split(run_dir, data)
    return notes if split is None else _compare_test(run_dir / SPLIT_FILE, split, data)


def _compare_test(path: Path, split: dict[str, set[str]], data) -> list[str]:
    """:func:`check_split` on the run's split as read."""
    seen, before = split["train"] | split["validation"], split["test"]
    now = {str(Path(p)) for p in data.test.paths}
    if not (now & (before | seen)):
        return [f"none of the test images is where it was at training time (the data moved? runs trained before "
                f"apps 0.9.0 cannot follow it); the test split was not compared with training time's ({path})"]
    leaked = sorted(now & seen)
    if leaked:
        raise DataError(f"{len(leaked)} test image(s) were training images of this run (e.g. {leaked[0]}): the "
                        f"dataset's folder changed since training and its split, made from the current listing, "
                        f"moved them; restore the folder as it was (the run's images by use are in {path}) or "
                        f"give the test images their own folder (test_normal)")
    if now != before:
        return [f"the test split differs from training time's: {len(now - before)} image(s) added, "
                f"{len(before - now)} missing (the run's test images are listed in {path})"]
    return []


def check_resumed_split(run_dir: Path, data, train_idx: list[int], val_idx: list[int]) -> list[str]:
    """Before a resumed run continues: :func:`check_split` (training images now in the test split are a
    DataError), and a note when the training or held-out images differ from those it started with."""
    split, notes = _read_split(run_dir, data)
    if split is None:
        return notes
    path, train_paths = run_dir / SPLIT_FILE, getattr(data.train, "paths", None)
    notes = _compare_test(path, split, data)
    if train_paths is None:
        return notes
    for key, idx in (("train", train_idx), ("validation", val_idx)):
        now = {str(Path(train_paths[i])) for i in idx}
        if now != split[key]:
            notes.append(f"the {key} images differ from those the run started with: {len(now - split[key])} "
                         f"added, {len(split[key] - now)} missing; it continues on the current ones (which {path} "
                         f"will list)")
    return notes


def _moved(path: str, old_root: Path, new_root: Path) -> str:
    """``path`` under ``old_root`` as the same file under ``new_root`` (unchanged when outside ``old_root``; the
    same path when the roots are one)."""
    try:
        return str(new_root / Path(path).relative_to(old_root))
    except ValueError:
        return str(Path(path))


SELECT_FEW_IMAGES = 20        # train.select = "best" on fewer held-out images says its choice is noisy
SELECT_COMPARE_MAX = 100      # held-out images on which the best epoch and the last are compared, at most
SELECT_BOOTSTRAP = 200        # bootstrap draws of that comparison


class Selector:
    """``train.select``: with "best", scores the model after every epoch (:meth:`Method.validation_score` on the
    first ``train.select_images`` held-out normal images), keeps the best one's state in ``best.pt``, and when
    training ends brings it back if it beats the last epoch's beyond the noise (:meth:`restore`); with "last",
    nothing. The scoring time counts toward ``train.max_minutes``."""

    def __init__(self, method: Method, config: dict[str, Any], run_dir: Path, samples, val_idx: list[int]):
        t = config["train"]
        self.method, self.run_dir, self.path = method, run_dir, run_dir / "best.pt"
        self.active = t["select"] == "best"
        self.best: dict[str, float] | None = None          # {"epoch", "score"} of the model in best.pt
        if not self.active:
            return
        if not method.can_validate:
            raise ConfigError(f'train.select = "best": {method.app} has no validation score to select an epoch by; '
                              f'use train.select = "last"')
        if not val_idx:
            raise ConfigError('train.select = "best" scores every epoch on held-out normal images, and '
                              'train.val_fraction holds out none; raise train.val_fraction or use '
                              'train.select = "last"')
        # (read only when selecting: a "last" run reads the held-out images once, after training)
        self.all_images, self.seed = [samples[i].image for i in val_idx], int(t["seed"])
        self.images = self.all_images[: int(t["select_images"])]
        few = (f"; only {len(self.images)}, so the choice is noisy (raise train.val_fraction)"
               if len(self.images) < SELECT_FEW_IMAGES else "")
        log(run_dir, f"train.select = best: every epoch's model is scored on {len(self.images)} held-out normal "
                     f"images{few}")

    def resume(self, best: dict[str, float] | None) -> None:
        if not self.active or best is None:
            return
        if self.path.is_file():
            self.best = dict(best)
        else:
            log(self.run_dir, f"warning: {self.path} is missing, so the best model before this resume is lost; "
                              f"train.select = best chooses among the epochs from here on")

    def after_epoch(self, record: dict[str, Any]) -> None:
        """Score the model of the epoch that ``record`` ends; record the score; keep the model when it is the best."""
        if not self.active:
            return
        t0 = time.perf_counter()
        self.method.train(False)
        v = self.method.validation_score(self.images)
        score, what = v.score, v.what
        record["select"] = score
        best = self.best is None or score > self.best["score"]
        if best:
            self.best = {"epoch": record["epoch"], "score": score}
            save_checkpoint(self.path, {"app": self.method.app, "state": self.method.state_dict(), **self.best})
        log(self.run_dir, f"epoch {record['epoch']}: {what} {100 * score:.1f}"
                          f"{' (best so far, kept in ' + self.path.name + ')' if best else ''} "
                          f"[{time.perf_counter() - t0:.0f} s]")

    def restore(self, history: list[dict[str, Any]]) -> float:
        """The model to keep when training ends; returns its epoch. The best-scoring epoch's model (``best.pt``) is
        kept only when, scored again on all held-out images (at most ``SELECT_COMPARE_MAX``; fresh images temper
        the luck of the maximum), it beats the last epoch's by more than twice the standard error of the
        difference (a paired bootstrap over the images); otherwise the last, longest-trained model stays."""
        last = history[-1]["epoch"] if history else 0
        if not self.active or self.best is None or self.best["epoch"] == last:
            return last
        from ssmad.scoring import bootstrap_difference

        t0 = time.perf_counter()
        images = self.all_images[:SELECT_COMPARE_MAX]
        last_state = copy.deepcopy(self.method.state_dict())
        v_last = self.method.validation_score(images)
        self.method.load_state_dict(load_checkpoint(self.path, self.method.app)["state"])
        v_best = self.method.validation_score(images)
        gap, se = v_best.score - v_last.score, 0.0
        if v_best.grouped is not None and v_last.grouped is not None:
            gap, se = bootstrap_difference(v_best.grouped, v_last.grouped, SELECT_BOOTSTRAP, self.seed)
        what = v_best.what if v_best.what == v_last.what else f"best: {v_best.what}; last: {v_last.what}"
        how = (f"on {len(images)} held-out images it scores {100 * gap:+.1f} ± {100 * se:.1f} (paired bootstrap) "
               f"against the last epoch's ({what}) [{time.perf_counter() - t0:.0f} s]")
        if gap > 2 * se:
            log(self.run_dir, f"train.select = best: the model of epoch {self.best['epoch']} is kept, not the last "
                              f"one (epoch {last}): {how}")
            return self.best["epoch"]
        self.method.load_state_dict(last_state)
        log(self.run_dir, f"train.select = best: the last epoch's model (epoch {last}) is kept: the best-scoring one "
                          f"(epoch {self.best['epoch']}) is not better by more than twice the standard error; {how}")
        return last


def decision_thresholds(scores: np.ndarray, maps: np.ndarray, q: float) -> dict[str, float]:
    """Image and pixel thresholds from normal validation images: the ``q`` quantile of their scores/pixels."""
    flat = maps.reshape(-1)
    if flat.size > 4_000_000:
        flat = np.random.default_rng(0).choice(flat, 4_000_000, replace=False)
    return {"image": float(np.quantile(scores, q)), "pixel": float(np.quantile(flat, q)),
            "pixel_low": float(np.quantile(flat, 0.5)), "quantile": q}


@torch.no_grad()
def infer(method: Method, samples, indices: list[int] | None = None, batch_size: int = 8,
          progress: str | None = None):
    """Scores (N,) and maps (N, H, W) float32 of ``samples[indices]``, the branch maps a method reports in
    ``AnomalyOutput.extras`` (name → (N, H, W)), and timing plus the ground-truth masks (N, H, W) bool
    (``info["masks"]``), read with the images so that evaluation does not load them again."""
    method.train(False)
    ds = Images(samples, indices)
    dl = loader(ds, batch_size, shuffle=False, workers=0)
    scores, maps, masks, extras = [], [], [], {}
    seconds = 0.0
    done = 0
    last = time.perf_counter()
    for batch in dl:
        images = batch["image"].to(method.device)
        t0 = time.perf_counter()
        out = method.predict(images)
        if method.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        scores.append(out.score.float().cpu().numpy())
        maps.append(out.anomaly_map[:, 0].float().cpu().numpy())
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
        for name, m in out.extras.items():
            extras.setdefault(name, []).append(m[:, 0].float().cpu().numpy())
        done += len(images)
        if progress and time.perf_counter() - last > 10:
            last = time.perf_counter()
            print(f"{progress}: {done}/{len(ds)} images", file=sys.stderr, flush=True)
    n = max(1, len(ds))
    return (np.concatenate(scores) if scores else np.zeros(0, np.float32),
            np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32),
            {k: np.concatenate(v) for k, v in extras.items()},
            {"seconds": seconds, "per_image_s": seconds / n, "batch_size": batch_size,
             "masks": np.concatenate(masks) if masks else np.zeros((0, 1, 1), bool)})
