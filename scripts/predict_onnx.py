"""Score images with an exported ONNX model using only numpy, Pillow and onnxruntime (no PyTorch, no ssmad).

    python predict_onnx.py MODEL.onnx IMAGE_OR_FOLDER ... --out DIR [--threshold T] [--save-maps] [--batch-size 8]

For a machine that has none of this project installed: copy this file, the model and its sidecar
(``MODEL.onnx.json``), ``pip install numpy pillow onnxruntime``. It writes ``DIR/predictions.csv`` (image, score,
decision, threshold, error: the columns of ``predict`` without its overlay and mask files) and with
``--save-maps`` ``DIR/maps/STEM.npy`` (float32, the anomaly map at the image's own resolution; the same name rule
as ``predict`` for the usual case of distinct file stems, else ``STEM-2`` ...). Each image is read as ``predict``
reads an ordinary 8-bit picture (EXIF orientation applied, RGB in [0, 1]; 16-bit and float files are scaled by
their range), resized to the model's input with the bilinear, antialiased filter the exported run was trained
with, and scored in batches; its map is resized back bilinearly (half-pixel centres). Scores agree with
``predict --model`` to float32 rounding (tests/apps/test_export.py). An image that cannot be read is an error row;
the exit status is then 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}


def read_rgb(path: Path) -> np.ndarray:
    """H×W×3 float32 in [0, 1], EXIF orientation applied; 16-bit grey scaled by 65535, float by its range."""
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I;16") or img.mode in ("I", "F"):
            a = np.asarray(img, dtype=np.float64)
            peak = float(a.max(initial=0.0))
            top = 65535.0 if img.mode != "F" else 1.0 if peak <= 1 else 255.0 if peak <= 255 else 65535.0
            return np.repeat(np.clip(a / top, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def to_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """3×S×S float32: each channel squash-resized with PIL's bilinear filter (antialiased when shrinking)."""
    planes = [rgb[..., c] if rgb.shape[:2] == (size, size) else
              np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c]), mode="F").resize((size, size),
                                                                                           Image.BILINEAR))
              for c in range(3)]
    return np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def resize_map(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """An H'×W' map resized bilinearly to h×w with half-pixel centres (no antialiasing), as ``predict`` does."""
    y0, y1, fy = _axis(m.shape[0], h)
    x0, x1, fx = _axis(m.shape[1], w)
    rows = m[y0] * (1 - fy)[:, None] + m[y1] * fy[:, None]
    return (rows[:, x0] * (1 - fx) + rows[:, x1] * fx).astype(np.float32)


def list_images(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            files.append(p)
    return list(dict((f.resolve(), f) for f in files).values())


def unique_stems(files: list[Path]) -> list[str]:
    taken: set[str] = set()
    names = []
    for f in files:
        name, n = f.stem, 1
        while name.casefold() in taken:
            n += 1
            name = f"{f.stem}-{n}"
        taken.add(name.casefold())
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threshold", type=float, help="image threshold (default: the run's, from the sidecar)")
    ap.add_argument("--save-maps", action="store_true")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: its own choice)")
    args = ap.parse_args(argv)
    try:
        import onnxruntime as ort

        side = json.loads(Path(str(args.model) + ".json").read_text())
        size = int(side["image_size"])
        opts = ort.SessionOptions()
        if args.threads:
            opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    except (ImportError, OSError, ValueError, KeyError) as exc:
        print(f"error: {args.model}: cannot open the model or its sidecar: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    threshold = args.threshold if args.threshold is not None else side.get("thresholds", {}).get("image")
    files = list_images(args.inputs)
    stems = unique_stems(files)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.save_maps:
        (args.out / "maps").mkdir(exist_ok=True)
    rows, errors = [], 0
    for start in range(0, len(files), args.batch_size):
        chunk, images, sizes = [], [], []
        for k in range(start, min(start + args.batch_size, len(files))):
            try:
                rgb = read_rgb(files[k])
            except Exception as exc:   # one error row per unreadable image, the others are scored
                rows.append({"image": str(files[k]), "score": "", "decision": "", "threshold": "",
                             "error": f"cannot read image {files[k]}: {type(exc).__name__}: {exc}"})
                errors += 1
                continue
            chunk.append(k)
            images.append(to_input(rgb, size))
            sizes.append(rgb.shape[:2])
        if not chunk:
            continue
        maps, scores = session.run(["anomaly_map", "score"], {"images": np.stack(images)})
        for k, amap, score, (h, w) in zip(chunk, maps, scores, sizes):
            decision = "" if threshold is None else ("anomalous" if score > threshold else "normal")
            rows.append({"image": str(files[k]), "score": f"{float(score):.6g}", "decision": decision,
                         "threshold": "" if threshold is None else f"{threshold:.6g}", "error": ""})
            if args.save_maps:
                np.save(args.out / "maps" / f"{stems[k]}.npy", resize_map(amap, h, w))
    order = {str(f): i for i, f in enumerate(files)}
    with open(args.out / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "score", "decision", "threshold", "error"])
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: order[r["image"]]))
    print(f"{len(files) - errors} images scored; results in {args.out / 'predictions.csv'}")
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
