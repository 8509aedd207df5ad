"""The fault matrix: what a user can get wrong, run through the command line, each case checked for its promise.

    .venv/bin/python scripts/fault_matrix.py [--out REPORT.md] [--case NAME ...] [--app almrr]

Builds every case in a temporary folder (a smoke run trained first, about 10 s on 2 cores), runs the app as a user
would (a fresh ``python -m apps.APP`` process each time), and checks:

- a failing case exits 2 with exactly one ``error:`` line on stderr and no traceback;
- a case that should work exits 0 (images that are odd but valid: 16-bit, RGBA, EXIF-rotated, 1 pixel high);
- no file of the user's (data folders, ground-truth masks, their own pictures, an earlier run) changed.

Prints a Markdown table (case, exit code, message, verdict) and writes it to ``--out``; exits 1 when any case
breaks its promise. A checkpoint that would run code when unpickled is among the cases: it must be refused
without running it (a marker file it would create must not appear).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
#: a pipeline role of each app whose component the "unknown component" case names wrongly
ROLE = {"almrr": "reconstructor", "vmpfd": "autoencoder"}


@dataclass
class Case:
    """One row of the matrix: ``argv`` for the app (``{RUN}``, ``{T}``, ``{ROLE}`` filled in), the exit code expected,
    ``needle`` that the error line must hold, and ``setup`` run before it (returns the folders of the user's to
    check unchanged)."""

    name: str
    argv: list[str]
    expect: int = 2
    needle: str = ""
    setup: Callable[[Path], list[Path]] | None = None
    env: dict[str, str] = field(default_factory=dict)
    warning: str = ""          # a case that exits 0 but must say this on one "warning:" line


def image(path: Path, size=(24, 32), seed=0, mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray((rng.random(size) * 65535).astype(np.uint16)).save(path)
    else:
        channels = {"RGB": 3, "RGBA": 4}[mode]
        Image.fromarray((rng.random((*size, channels)) * 255).astype(np.uint8), mode).save(path, **save)
    return path


def normal_folder(t: Path, n: int = 8) -> Path:
    for i in range(n):
        image(t / "data" / "good" / f"{i}.png", seed=i)
    return t / "data"


class Evil:
    """Unpickling this would create the marker file: a checkpoint must never be unpickled with code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def setups() -> dict[str, Callable[[Path], list[Path]]]:
    def missing(t):
        return []

    def empty(t):
        (t / "empty").mkdir()
        return [t / "empty"]

    def corrupt(t):
        d = normal_folder(t)
        (d / "good" / "3.png").write_bytes((d / "good" / "3.png").read_bytes()[:50])
        return [d]

    def zero_byte(t):
        d = normal_folder(t)
        (d / "good" / "4.png").write_bytes(b"")
        return [d]

    def bad_mask(t):
        d = normal_folder(t)
        image(d / "bad" / "x.png", seed=9)
        image(d / "gt" / "x.png", size=(10, 10), seed=9)   # not the image's size
        return [d]

    def odd_images(t):
        image(t / "in" / "deep.png", mode="I;16")
        image(t / "in" / "alpha.png", mode="RGBA")
        exif = Image.Exif()
        exif[0x0112] = 6                                    # rotated 90 degrees
        image(t / "in" / "rotated.jpg", size=(20, 40), exif=exif.tobytes())
        image(t / "in" / "thin.png", size=(1, 40))
        return [t / "in"]

    def huge(t):
        (t / "in").mkdir()
        # a valid PNG header announcing 100000 x 100000 pixels, with almost no data behind it
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
        (t / "in" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
        image(t / "in" / "ok.png")
        return [t / "in"]

    def dataset_as_out(t):
        image(t / "in" / "a.png")
        image(t / "ds" / "masks" / "a.png", seed=5)
        image(t / "ds" / "overlays" / "userpic.png", seed=6)
        return [t / "in", t / "ds"]

    def used_out(t):
        image(t / "in" / "a.png")
        (t / "out").mkdir()
        (t / "out" / "notes.txt").write_text("mine")
        return [t / "in"]

    def bad_toml(t):
        (t / "bad.toml").write_text("[train\nlr = ")
        return [t / "bad.toml"]

    def truncated(t, run=None):
        return []

    def one_image(t):
        image(t / "in" / "a.png")
        return [t / "in"]

    return {k: v for k, v in locals().items() if callable(v)}


def cases() -> list[Case]:
    s = setups()
    smoke = ["--preset", "smoke", "--device", "cpu", "--no-test"]
    return [
        Case("missing data folder", ["train", "--data", "folder:{T}/nowhere", "--data-param", "normal=good", *smoke,
                                     "--out", "{T}/r"], needle="nowhere", setup=s["missing"]),
        Case("empty data folder", ["train", "--data", "folder:{T}/empty", "--data-param", "normal=.", *smoke,
                                   "--out", "{T}/r"], needle="empty", setup=s["empty"]),
        Case("corrupt training image", ["train", "--data", "folder:{T}/data", "--data-param", "normal=good", *smoke,
                                        "--out", "{T}/r"], needle="3.png", setup=s["corrupt"]),
        Case("zero-byte training image", ["train", "--data", "folder:{T}/data", "--data-param", "normal=good",
                                          *smoke, "--out", "{T}/r"], needle="4.png", setup=s["zero_byte"]),
        Case("mask of another size", ["train", "--data", "folder:{T}/data", "--data-param", "normal=good",
                                      "--data-param", "abnormal=bad", "--data-param", "masks=gt", *smoke, "--out",
                                      "{T}/r"], needle="x.png", setup=s["bad_mask"]),
        Case("bad config value", ["train", *smoke, "--set", "train.lr=-1", "--out", "{T}/r"], needle="train.lr"),
        Case("unknown component", ["train", *smoke, "--set", "pipeline.{ROLE}.name=nope", "--out", "{T}/r"],
             needle="pipeline.{ROLE}.name: unknown"),
        Case("malformed TOML", ["train", *smoke, "--config", "{T}/bad.toml", "--out", "{T}/r"],
             needle="bad.toml", setup=s["bad_toml"]),
        Case("misspelt SSMAD_PLUGINS", ["components"], expect=0, env={"SSMAD_PLUGINS": "builtin,nonexistent-dist"},
             warning="nonexistent-dist"),
        Case("16-bit, RGBA, EXIF-rotated, 1-pixel images", ["predict", "--run", "{RUN}", "{T}/in", "--out", "{T}/p",
                                                            "--device", "cpu"], expect=0, setup=s["odd_images"]),
        Case("huge image among good ones", ["predict", "--run", "{RUN}", "{T}/in", "--out", "{T}/p", "--device",
                                            "cpu"], needle="huge.png", setup=s["huge"]),
        Case("predict into a dataset folder", ["predict", "--run", "{RUN}", "{T}/in", "--out", "{T}/ds",
                                               "--overwrite", "--device", "cpu"], needle="masks/a.png",
             setup=s["dataset_as_out"]),
        Case("predict into a used folder", ["predict", "--run", "{RUN}", "{T}/in", "--out", "{T}/out", "--device",
                                            "cpu"], expect=0, setup=s["used_out"]),
        Case("truncated model.pt", ["test", "--run", "{T}/trunc"], needle="truncated or damaged"),
        Case("checkpoint that runs code", ["test", "--run", "{T}/evil"], needle="not a checkpoint written by ssmad"),
        Case("plain pickle as model.pt", ["test", "--run", "{T}/pickle"], needle="not a checkpoint written by ssmad"),
        Case("edited config.toml", ["test", "--run", "{T}/edited"], needle="data.image_size"),
        Case("kill -9 while training, then resume", ["train", "--resume", "--out", "{T}/killed", "--no-test"],
             expect=0),
        Case("two predicts at once, one --out", ["predict", "--run", "{RUN}", "{T}/in", "--out", "{T}/twice",
                                                 "--device", "cpu"], expect=0, setup=s["one_image"]),
    ]


def app(name: str, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"apps.{name}", *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, **kw)


def snapshot(paths: list[Path]) -> dict[str, bytes]:
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): p.read_bytes() for p in files})
    return out


def prepare_runs(name: str, run: Path, t: Path) -> None:
    """The damaged, edited and killed copies of the trained run that the checkpoint cases use."""
    (t / "trunc").mkdir()
    model = (run / "model.pt").read_bytes()
    (t / "trunc" / "model.pt").write_bytes(model[: len(model) // 2])
    (t / "evil").mkdir()
    (t / "evil" / "model.pt").write_bytes(pickle.dumps(Evil(t / "MARKER")))
    (t / "pickle").mkdir()
    (t / "pickle" / "model.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    shutil.copytree(run, t / "edited")
    cfg = t / "edited" / "config.toml"
    cfg.write_text(cfg.read_text().replace("image_size = 64", "image_size = 96", 1))
    proc = subprocess.Popen([sys.executable, "-m", f"apps.{name}", "train", "--preset", "smoke", "--epochs", "200",
                             "--device", "cpu", "--no-test", "--out", str(t / "killed")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (t / "killed" / "checkpoint.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)                                  # somewhere in a later epoch, maybe inside a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_case(name: str, case: Case, run: Path, t: Path) -> dict:
    user = case.setup(t) if case.setup else []
    protected = [*user, run] + ([t / "edited"] if "edited" in case.name else [])
    before = snapshot(protected)
    fill = {"{RUN}": str(run), "{T}": str(t), "{ROLE}": ROLE[name]}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    argv = [filled(a) for a in case.argv]
    needle = filled(case.needle)
    if case.name.startswith("two predicts"):
        other = subprocess.Popen([sys.executable, "-m", f"apps.{name}", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc = app(name, argv, case.env)
    if case.name.startswith("two predicts"):
        other_err = other.communicate()[1]
        if other.returncode != 0:
            proc = subprocess.CompletedProcess(proc.args, other.returncode, proc.stdout, other_err)
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in err_lines if line.startswith("error:")]
    problems = []
    if proc.returncode != case.expect:
        problems.append(f"exit {proc.returncode}, expected {case.expect}")
    if "Traceback" in proc.stderr:
        problems.append("traceback")
    if case.expect == 2 and len(errors) != 1:
        problems.append(f"{len(errors)} error lines")
    if needle and not any(needle in line for line in errors):
        problems.append(f"error line lacks {needle!r}")
    if case.warning and not any(line.startswith("warning:") and case.warning in line for line in err_lines):
        problems.append(f"no warning line naming {case.warning!r}")
    if snapshot(protected) != before:
        problems.append("a user's file changed")
    if (t / "MARKER").exists():
        problems.append("the checkpoint's code ran")
    if case.name.startswith("kill"):
        history = [json.loads(x)["epoch"] for x in (t / "killed" / "history.jsonl").read_text().splitlines()]
        if history != list(range(1, len(history) + 1)) or list((t / "killed").glob(".*.tmp")):
            problems.append(f"history {history[:5]}... or temporary files left")
    shown = errors[0] if errors else next((x for x in err_lines if x.startswith("warning:")), "")
    if not shown and proc.stdout.strip():
        shown = proc.stdout.strip().splitlines()[-1]
    return {"case": case.name, "exit": proc.returncode, "message": shown[:160],
            "verdict": "ok" if not problems else "BROKEN: " + "; ".join(problems)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--app", default="almrr", choices=("almrr", "vmpfd"))
    ap.add_argument("--case", action="append", help="run only this case (repeatable; default: all)")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    chosen = cases()
    if args.case:
        wanted = set(args.case)
        unknown = wanted - {c.name for c in chosen}
        if unknown:
            ap.error(f"--case: unknown {sorted(unknown)}; cases: {'; '.join(c.name for c in chosen)}")
        chosen = [c for c in chosen if c.name in wanted]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssmad-faults-") as tmp:
        base = Path(tmp)
        run = base / "run"
        trained = app(args.app, ["train", "--preset", "smoke", "--device", "cpu", "--no-test", "--out", str(run)])
        if trained.returncode != 0:
            print(f"error: the smoke run did not train:\n{trained.stderr}", file=sys.stderr)
            return 1
        for i, case in enumerate(chosen):
            t = base / f"case{i}"
            t.mkdir()
            if any(f"{{T}}/{k}" in case.argv for k in ("trunc", "evil", "pickle", "edited", "killed")):
                prepare_runs(args.app, run, t)
            row = run_case(args.app, case, run, t)
            rows.append({**row, "message": row["message"].replace(str(t), "T").replace(str(run), "RUN")})
            print(f"{rows[-1]['verdict']:>4}  {case.name}", file=sys.stderr, flush=True)
    table = ["| case | exit | message (stderr, else the last line of stdout) | verdict |", "|---|---:|---|---|"]
    table += [f"| {r['case']} | {r['exit']} | `{r['message'].replace('|', '/')}` | {r['verdict']} |" for r in rows]
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(r["verdict"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
