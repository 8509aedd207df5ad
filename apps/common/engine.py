"""The training loop shared by the apps: epochs, checkpoints, resumes, then the statistics and thresholds."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from ssmad.core import ConfigError, DataError, TrainingError, fmt_time

from . import distributed
from .data import LazyImages, TrainItems, loader, open_data, split_validation
from .inference import decision_thresholds, infer
from .method import Method
from .runs import load_checkpoint, log, save_checkpoint, write_config, write_history
from .select import Selector
from .split import check_resumed_split, write_split


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


def eta(seconds_to_last_epoch: float, budget_left_s: float, t: dict[str, Any], epochs: int) -> str:
    """The progress line's time to the end the run will reach: its last epoch, or ``train.max_minutes`` when the
    budget (``budget_left_s`` of it left; ignored when there is none) runs out first; says which."""
    if t.get("max_minutes") and budget_left_s < seconds_to_last_epoch:
        return f"ETA {fmt_time(budget_left_s)} (train.max_minutes = {t['max_minutes']:g})"
    return f"ETA {fmt_time(seconds_to_last_epoch)} (epoch {epochs})"


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(method: Method, config: dict[str, Any], run_dir: Path, resume: bool = False, data=None) -> dict[str, Any]:
    """Train ``method``; checkpoint every epoch; return the final payload (also written to ``model.pt``).

    In a distributed training (:mod:`apps.common.distributed`: torchrun, one process per rank) every rank trains
    its shard of each global batch of ``train.batch_size`` images; rank 0 alone writes the run folder, scores the
    epochs (``train.select``) and fits the statistics and thresholds, which every rank then receives: the payload
    is the same on every rank."""
    t = config["train"]
    seed = int(t["seed"])
    world = distributed.world()
    main = world.main
    seed_everything(seed)
    data = open_data(config, verify=True) if data is None else data
    train_idx, val_idx = split_validation(data.train, float(t["val_fraction"]), seed)
    if len(train_idx) < 2:   # before prepare, which may distil a feature extractor for minutes
        raise DataError(f"{config['data']['spec']}: {len(train_idx)} training image(s) after holding out "
                        f"{len(val_idx)} for validation; training needs at least 2 normal images")
    if resume:   # before anything is written: a leaked image stops the resume with the run as it was
        for note in check_resumed_split(run_dir, data, train_idx, val_idx):
            print(f"note: {note}", file=sys.stderr, flush=True)
    # the epochs are scored by rank 0 alone (in the folder it writes)
    selector = Selector(method, config if main else {**config, "train": {**t, "select": "last"}}, run_dir,
                        data.train, val_idx)
    if main:   # rank 0 first: what prepare writes (a distilled PDN) the other ranks then read
        method.prepare(run_dir, data.train, train_idx)
    distributed.barrier()
    if not main:
        method.prepare(run_dir, data.train, train_idx)
    if main:
        if not resume:   # a resumed run's config.toml is rewritten with its first checkpoint (below)
            write_config(run_dir, config)
        write_split(run_dir, data, train_idx, val_idx)
    items = TrainItems(data.train, train_idx, method.train_item, seed)
    batch_size = min(int(t["batch_size"]), len(items))   # the global batch, over all ranks
    if batch_size % world.size:
        raise ConfigError(f"train.batch_size = {batch_size}: a distributed training splits each batch over its "
                          f"{world.size} processes; give a multiple of {world.size}")
    # full batches only: the incomplete last one is dropped (the shuffle changes it every epoch), so batch norm
    # never sees a batch of one image. The sampler is the same for one process and for several: rank r takes
    # positions r, r + size, ... of each epoch's permutation, so the ranks' batches together are the batch one
    # process would train on
    sampler = DistributedSampler(items, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    dl = loader(items, batch_size // world.size, shuffle=False, workers=int(t["workers"]), seed=seed,
                drop_last=True, sampler=sampler)
    if world.distributed:
        method.parallel = distributed.data_parallel(method.model, method.parameters(), method.device)
    optimizer = method.make_optimizer()
    # fp16's narrow range needs its loss scaled (bf16 has fp32's range). The scale is not checkpointed: a resumed
    # fp16 run starts from the default scale and may skip a step or two the uninterrupted one did not
    scaler = torch.amp.GradScaler(method.device.type, enabled=method.precision == "fp16")
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
        if main:
            write_history(run_dir, history)
        selector.resume(ckpt.get("best"))
        cut = bool(history) and start_epoch < history[-1]["epoch"] < start_epoch + 1
        again = f" (epoch {start_epoch + 1}, cut short by train.max_minutes, runs again in full)" if cut else ""
        log(run_dir, f"resumed from {ckpt_path} after epoch {start_epoch}/{epochs}{again}")
    log(run_dir, f"data: {config['data']['spec']} category={data.category or '-'}: {len(train_idx)} train, "
                 f"{len(val_idx)} validation, {len(data.test)} test images")
    log(run_dir, f"model: {method.describe()}; device {method.device}; {epochs} epochs x {len(dl)} steps")
    if world.distributed:
        log(run_dir, f"distributed: {world.size} process(es), backend {distributed.backend()}, "
                     f"{batch_size // world.size} images per process and step")
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
        sampler.set_epoch(epoch)
        dl.generator.manual_seed(epoch_seed(seed, epoch))
        at_epoch_start = rng_state()   # what a checkpoint of an epoch cut short resumes from
        method.train(True)
        sums: dict[str, float] = {}
        t_epoch = time.perf_counter()
        for step, batch in enumerate(dl):
            batch = _to(batch, method.device)
            losses = method.train_step(batch)
            loss = losses["loss"]
            if distributed.any_rank(not bool(torch.isfinite(loss)), method.device):   # every rank stops
                terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())
                where = f"; the checkpoint of epoch {epoch} is kept in {ckpt_path}" if ckpt_path.exists() else ""
                raise TrainingError(f"loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1} "
                                    f"({terms}); lower train.lr or check the data{where}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
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
            if budget_s and distributed.any_rank(now - t_start >= budget_s, method.device):
                out_of_time = True
                log(run_dir, f"train.max_minutes = {t['max_minutes']} reached at epoch {epoch + 1}, step "
                             f"{step + 1}/{len(dl)}: training stops here")
                break
        train_seconds += time.perf_counter() - t_epoch
        n_steps = step + 1
        sums = distributed.mean_over_ranks(sums, method.device)   # the global batch's losses
        record = {"epoch": epoch + 1 if not out_of_time else round(epoch + n_steps / len(dl), 3),
                  **{k: v / n_steps for k, v in sums.items()}, "seconds": round(time.perf_counter() - t_epoch, 2)}
        selector.after_epoch(record)
        history.append(record)
        # "epoch" counts completed epochs: one cut short by the time budget runs again in full on --resume
        done = epoch + 1 if n_steps == len(dl) else epoch
        rng = rng_state() if done == epoch + 1 else at_epoch_start
        if not main:
            if out_of_time:
                break
            continue
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
    method.parallel = None
    epochs_done = history[-1]["epoch"] if history else 0
    selected, thresholds = epochs_done, {}
    if main:
        selected = selector.restore(history)
        val_images = [data.train[i].image for i in val_idx]
        for line in method.after_training(val_images, train_images=LazyImages(data.train, train_idx)) or []:
            log(run_dir, line)
        if val_images:
            scores, maps, _, _ = infer(method, data.train, val_idx, batch_size=int(t["eval_batch_size"]))
            thresholds = decision_thresholds(scores, maps, float(t.get("threshold_quantile", 0.99)))
    if world.distributed:   # rank 0's model and fits on every rank
        state, thresholds, selected = distributed.broadcast((method.state_dict() if main else None, thresholds,
                                                            selected))
        if not main:
            method.load_state_dict(state)
    payload = {"app": method.app, "config": config, "state": method.state_dict(), "epoch": epochs_done,
               "history": history, "train_seconds": train_seconds, "thresholds": thresholds,
               "n_train": len(train_idx), "n_val": len(val_idx), "selected_epoch": selected}
    if not main:
        return payload
    save_checkpoint(run_dir / "model.pt", payload)
    write_config(run_dir, config)
    kept = "" if selected == epochs_done else f" (the model of epoch {selected}, train.select = best)"
    log(run_dir, f"trained {epochs_done} epochs in {fmt_time(train_seconds)}; model{kept} written to "
                 f"{run_dir / 'model.pt'}")
    return payload
