"""What ``predict`` reads and writes: the input listing, output names, and the manifest of its own files.

``predict`` records every file it writes in ``OUT/predict-manifest.json`` (written atomically, before the files
it lists), so that ``--overwrite`` removes exactly those files and nothing a user put there; a folder without a
manifest never holds "earlier results", and a file predict would write over that it did not write itself stops
the command before anything is changed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ssmad.core import ConfigError, DataError
from ssmad.core.files import atomic_write_text
from ssmad.datasets.io import IMAGE_EXTENSIONS

IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)   # what the datasets read (ssmad.datasets.io)
#: the folders of ``predict``'s outputs in ``--out``
OUTPUT_FOLDERS = ("overlays", "masks", "maps")
CSV_NAME = "predictions.csv"
MANIFEST_NAME = "predict-manifest.json"
MANIFEST_FORMAT = "ssmad-predict/1"
NAMING = ("Output files are named after each image's file name without its extension (a.png gives "
          "overlays/a.png); when several inputs share that name, each is prefixed with its folder's name "
          "(x/a.png gives x_a), and a name still taken gets a number (x_a-2), the images named after "
          "themselves keeping theirs. The input order decides the numbers: folders are read in sorted order, "
          "skipping hidden files (names starting with '.').")


def collect_images(inputs: list[str], skip: Sequence[Path] = ()) -> list[Path]:
    """The image files of ``inputs`` (files, or folders searched recursively in sorted order, skipping hidden files
    and folders, whose names start with ".", and the folders in ``skip``), each file once, in order."""
    files: list[Path] = []
    skipped = {s.resolve() for s in skip}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts)
                           and not skipped.intersection(f.resolve().parents))
            if not found:
                raise DataError(f"{p}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; hidden "
                                f"files skipped)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)   # a file given twice (or inside a folder also given) is scored once
    return list(unique.values())


def output_stems(files: Sequence[Path]) -> list[str]:
    """A unique output name (no extension) for each file, compared ignoring case (a case-insensitive file system
    would merge them): its stem when no other file has it, else ``FOLDER_STEM``; a name still taken gets ``-2``,
    ``-3``, ... in input order, the files named by their own stem choosing first. So an image keeps its own name
    whether predicted alone or with others, unless another input has the same name."""
    def key(name: str) -> str:
        return name.casefold()

    counts: dict[str, int] = {}
    for f in files:
        counts[key(f.stem)] = counts.get(key(f.stem), 0) + 1
    wanted = [f.stem if counts[key(f.stem)] == 1 or not f.resolve().parent.name else
              f"{f.resolve().parent.name}_{f.stem}" for f in files]
    names: list[str] = [""] * len(files)
    taken: set[str] = set()
    for i in sorted(range(len(files)), key=lambda i: wanted[i] != files[i].stem):  # stable: input order within
        name, n = wanted[i], 1
        while key(name) in taken:
            n += 1
            name = f"{wanted[i]}-{n}"
        taken.add(key(name))
        names[i] = name
    return names


def planned_outputs(stems: Iterable[str], masks: bool, maps: bool) -> list[str]:
    """The files (relative to ``--out``) that ``predict`` writes for images named ``stems``, the CSV first; the
    branch maps (``maps/STEM.BRANCH.npy``) are known only once scored and are checked by :func:`clashes`."""
    out = [CSV_NAME]
    for stem in stems:
        out.append(f"overlays/{stem}.png")
        if masks:
            out.append(f"masks/{stem}.png")
        if maps:
            out.append(f"maps/{stem}.npy")
    return out


class Manifest:
    """The files one ``predict`` wrote in ``out``, kept in ``out/predict-manifest.json``.

    :meth:`record` adds names and rewrites the manifest atomically *before* the caller writes those files, so after
    any interruption the manifest lists at least what is on disk of predict's (and maybe a few names not yet
    written, which removal skips)."""

    def __init__(self, out: Path, run: str = "") -> None:
        self.out, self.run = out, run
        self.files: list[str] = []
        self._known: set[str] = set()

    @property
    def path(self) -> Path:
        return self.out / MANIFEST_NAME

    @classmethod
    def read(cls, out: Path) -> Manifest | None:
        """The manifest of an earlier predict in ``out``; None when there is none. A ConfigError naming the file
        when it cannot be read (nothing is then removed: the user decides)."""
        path = out / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            files = doc["files"]
            if doc.get("format") != MANIFEST_FORMAT or not all(isinstance(f, str) for f in files):
                raise ValueError("not a predict manifest")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--out {out}: {path} is unreadable ({exc}), so the files of the earlier predict are "
                              f"not known; choose another folder, or remove that folder's earlier results and "
                              f"{MANIFEST_NAME} yourself (nothing was changed)") from None
        manifest = cls(out, str(doc.get("run", "")))
        manifest.files = [f for f in files if _inside(f)]
        manifest._known = set(manifest.files)
        return manifest

    def __contains__(self, name: str) -> bool:
        return name in self._known

    def record(self, names: Iterable[str]) -> None:
        """Add ``names`` (relative to ``out``) and write the manifest, before those files are written."""
        new = [n for n in names if n not in self._known]
        if not new and self.path.is_file():
            return
        self.files.extend(new)
        self._known.update(new)
        doc = {"format": MANIFEST_FORMAT, "run": self.run, "files": self.files}
        atomic_write_text(self.path, json.dumps(doc, indent=1) + "\n")

    def on_disk(self) -> list[str]:
        """The listed files that exist now."""
        return [f for f in self.files if (self.out / f).is_file()]

    def remove(self) -> None:
        """Remove the listed files, then the output folders left empty, then the manifest itself; nothing else."""
        for name in self.files:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (self.out / name).unlink()
        for folder in OUTPUT_FOLDERS:
            with contextlib.suppress(OSError):
                (self.out / folder).rmdir()   # only when empty
        self.path.unlink(missing_ok=True)


def _inside(name: str) -> bool:
    """A manifest entry names a file inside ``--out`` (a hand-edited one cannot point elsewhere)."""
    p = Path(name)
    return not p.is_absolute() and ".." not in p.parts and name != MANIFEST_NAME


def clashes(out: Path, names: Iterable[str], earlier: Manifest | None) -> list[str]:
    """Of ``names`` (relative to ``out``), those that exist and that the earlier predict (``earlier``) did not
    write: predict must not write over them."""
    return [n for n in names if (out / n).exists() and (earlier is None or n not in earlier)]


def branch_clashes(out: Path, stems: Iterable[str], earlier: Manifest | None) -> list[str]:
    """Existing ``maps/STEM.*.npy`` files (where branch maps go) that the earlier predict did not write."""
    maps = out / "maps"
    if not maps.is_dir():
        return []
    found = []
    for stem in stems:
        for f in sorted(maps.glob(f"{_glob_escape(stem)}.*.npy")):
            name = f"maps/{f.name}"
            if earlier is None or name not in earlier:
                found.append(name)
    return found


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def refuse_clashes(out: Path, found: list[str], earlier: Manifest | None) -> None:
    """A ConfigError when ``found`` (files predict did not write) is not empty."""
    if not found:
        return
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    why = f"not listed in its {MANIFEST_NAME}" if earlier is not None else f"the folder has no {MANIFEST_NAME}"
    raise ConfigError(f"--out {out}: predict would write over {', '.join(found[:3])}{more}, which it did not write "
                      f"({why}); choose another folder (nothing was changed)")


def write_csv(out: Path, rows: dict[int, dict[str, Any]], fields: Sequence[str]) -> Path:
    """``predictions.csv`` in ``out`` (atomically), one row per input in input order."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows[k] for k in sorted(rows))
    return atomic_write_text(out / CSV_NAME, buf.getvalue())


FIELDS = ("image", "score", "decision", "threshold", "overlay", "mask", "error")


def write_prediction(out: Path, manifest: Manifest, stem: str, pred, thresholds: dict[str, float],
                     threshold: float | None, save_maps: bool) -> dict[str, str]:
    """Write one :class:`~apps.common.predictor.Prediction`'s files under ``out`` (the overlay; the mask at the
    run's pixel threshold, if it has one; with ``save_maps`` the float maps, ``maps/STEM.npy`` and each branch as
    ``maps/STEM.BRANCH.npy``), each recorded in ``manifest`` first; return its CSV row. A file that cannot be
    written makes the row an error row (the image's other files may remain, listed in the manifest)."""
    from PIL import Image

    from ssmad.scoring.report import overlay

    row = {"image": str(pred.path), **{k: "" for k in FIELDS[1:]}}
    if pred.error is not None:
        return {**row, "error": pred.error}
    pixel = thresholds.get("pixel")
    names = {"overlay": f"overlays/{stem}.png"}
    if pixel is not None:
        names["mask"] = f"masks/{stem}.png"
    if save_maps:
        names["map"] = f"maps/{stem}.npy"
        names.update({f"map.{b}": f"maps/{stem}.{b}.npy" for b in pred.branches})
    manifest.record(names.values())
    try:
        for name in names.values():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
        vmin, vmax = display_range(thresholds, pred.anomaly_map)
        Image.fromarray(overlay(pred.image, pred.anomaly_map, vmin=vmin, vmax=vmax)).save(out / names["overlay"])
        if pixel is not None:
            Image.fromarray(((pred.anomaly_map > pixel) * 255).astype("uint8")).save(out / names["mask"])
        if save_maps:
            import numpy as np

            np.save(out / names["map"], pred.anomaly_map.astype(np.float32))
            for b, bmap in pred.branches.items():
                np.save(out / names[f"map.{b}"], bmap.astype(np.float32))
    except (OSError, ValueError, DataError) as exc:
        return {**row, "error": f"cannot write the results of {pred.path}: {type(exc).__name__}: {exc}"}
    decision = "" if pred.anomalous is None else ("anomalous" if pred.anomalous else "normal")
    return {**row, "score": f"{pred.score:.6g}", "decision": decision,
            "threshold": "" if threshold is None else f"{threshold:.6g}", "overlay": names["overlay"],
            "mask": names.get("mask", "")}


def display_range(thresholds: dict[str, float], amap) -> tuple[float, float]:
    """Colour scale of overlays: from the median of normal validation pixels to as far above the pixel
    threshold, so the threshold sits mid-scale; per-image min/max when the run has no validation images."""
    if "pixel" in thresholds and "pixel_low" in thresholds:
        low, thr = thresholds["pixel_low"], thresholds["pixel"]
        return low, max(thr + (thr - low), low + 1e-6)
    return float(amap.min()), max(float(amap.max()), float(amap.min()) + 1e-6)
