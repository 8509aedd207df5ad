"""Image and mask reading with uniform mode handling, resizing to the model's square input, file listing.

Every file is read as displayed: an EXIF orientation tag (phones, some cameras; JPEG, TIFF, PNG, WebP) is
applied (``PIL.ImageOps.exif_transpose``) to images and masks alike, so a mask drawn on the shown picture fits it.

Every image mode becomes RGB float32 in [0, 1]: 1-bit, L, LA, P (palette), RGB, RGBA (alpha dropped), CMYK,
YCbCr..., 16-bit grey (``I;16*``, and ``I`` as written for 16-bit PNGs; scaled by 65535, not clipped to 8 bits),
float (``F``; taken as is when within [0, 1], else scaled by 255 or 65535). 16-bit colour TIFFs (which PIL
reduces to 8 bits or cannot decode) are read with ``tifffile`` when it is installed; 16-bit colour PNGs are decoded
by PIL to 8 bits per channel (range kept, precision 1/255).

Masks (:func:`load_mask`), any mode, become float32 H×W in {0, 1} (1 = defect):

- colour masks take the channel maximum (a red annotation counts); the alpha channel is dropped, except in an
  RGBA (or LA) mask whose colour channels are all zero and whose alpha varies: the drawing is in the alpha, which
  is then the mask;
- integer masks (1-bit, 8-bit, 16-bit, palette colours) whose values are all 0 or 1 are read as binary
  (1 = defect), whatever the rule: a 0/1 mask is not "1/255 of the range";
- otherwise the values are normalised to [0, 1] like images (by the dtype's range) and binarised at > 0.5
  (``rule="half"``, the default: 0/255 and anti-aliased masks work, > 127 of 255) or at > 0
  (``rule="nonzero"``: VisA stores masks as small label values).

A mask that is empty after this reading (a 0/100 8-bit mask, a 16-bit mask holding 0/255...) is reported by
:meth:`ssmad.datasets.AnomalyDataset.verify` with an :class:`ssmad.datasets.EmptyMaskWarning`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ssmad.core import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MaskRule = Literal["half", "nonzero"]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _tiff_array(path: Path) -> np.ndarray | None:
    try:
        import tifffile
    except ImportError:
        return None
    try:
        a = np.asarray(tifffile.imread(str(path)))
    except Exception:  # noqa: BLE001 - any decoder failure means "not readable"; the caller reports PIL's reason
        return None
    while a.ndim > 3:  # multi-page stacks: first page
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):  # planar (C, H, W)
        a = np.moveaxis(a, 0, -1)
    return a


def _array_to_unit(a: np.ndarray) -> np.ndarray:
    """A decoded array (H×W or H×W×C, any dtype) scaled to float32 [0, 1] by its dtype's range."""
    if a.dtype == bool:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype.kind in "ui":
        top = 65535.0 if a.dtype.itemsize <= 2 or a.max(initial=0) <= 65535 else float(np.iinfo(a.dtype).max)
        return np.clip(a.astype(np.float64) / top, 0.0, 1.0).astype(np.float32)
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    peak = float(finite.max()) if finite.size else 0.0
    top = 1.0 if peak <= 1.0 else (255.0 if peak <= 255.0 else 65535.0)
    return np.clip(np.nan_to_num(a / top, nan=0.0), 0.0, 1.0).astype(np.float32)


ORIENTATION = 0x0112  # the EXIF orientation tag


def _orientation_value(value) -> int:
    try:
        value = int(value[0] if isinstance(value, tuple) else value)
    except (TypeError, ValueError, IndexError):
        return 1
    return value if 1 <= value <= 8 else 1


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 = as stored). Unreadable EXIF counts as 1: it must not make an image unreadable.
    Call it on a loaded image (PIL loads a PNG to look for its EXIF)."""
    try:
        return _orientation_value(img.getexif().get(ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF blocks raise anything from struct.error to KeyError
        return 1


def orient_array(a: np.ndarray, orientation: int) -> np.ndarray:
    """``a`` (H×W or H×W×C) as displayed under an EXIF ``orientation``: the numpy twin of
    ``ImageOps.exif_transpose`` (used for arrays PIL did not decode, 16-bit colour TIFFs)."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def _pil_array(img: Image.Image, keep_alpha: bool) -> np.ndarray:
    """A loaded PIL image as a numpy array in its own dtype: H×W (1-bit as 0/255, L, 16-bit, I, F) or H×W×C
    (RGB; LA / RGBA when ``keep_alpha``, else the alpha is dropped; other colour modes become RGB)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F", "L"):
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode in ("LA", "La"):
        return np.asarray(img.convert("LA") if keep_alpha else img.convert("L"))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if keep_alpha and img.mode == "RGBA":
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))


def _deep_colour_tiff(img: Image.Image) -> bool:
    if img.format != "TIFF" or img.mode in ("L", "1", "P", "F", "I") or img.mode.startswith("I;16"):
        return False
    bits = getattr(img, "tag_v2", {}).get(258)
    bits = bits if isinstance(bits, tuple) else (bits,)
    return any(isinstance(b, int) and b > 8 for b in bits)


def _decode(path: str | os.PathLike, what: str, keep_alpha: bool = False) -> np.ndarray:
    """Fully decode ``path`` as displayed (EXIF orientation applied), in the file's own dtype (see
    :func:`_pil_array`); DataError naming the file if it cannot be read (a truncated file fails here)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    tiff_orientation = 1  # for arrays tifffile decodes (PIL applies a TIFF's orientation itself when loading)
    try:
        with Image.open(path) as img:
            if img.format == "TIFF":
                tiff_orientation = _orientation_value(getattr(img, "tag_v2", {}).get(ORIENTATION, 1))
            img.load()
            orientation = _orientation(img)  # after the full decode: PNG may keep its EXIF after the pixels
            shown = ImageOps.exif_transpose(img) if orientation != 1 else img  # a copy: only when needed
            deep = _deep_colour_tiff(img)
            out = _pil_array(shown, keep_alpha)
        if deep:  # PIL keeps only 8 bits of 16-bit colour TIFFs: read the full depth when tifffile is there
            a = _tiff_array(path)
            if a is not None and a.size:
                out = orient_array(a, tiff_orientation)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        a = _tiff_array(path) if path.suffix.lower() in (".tif", ".tiff") else None
        if a is None or a.size == 0:
            raise DataError(f"cannot read {what} {path}: {_reason(exc)}") from None
        out = orient_array(a, tiff_orientation)
    if out.ndim not in (2, 3) or out.shape[0] == 0 or out.shape[1] == 0:
        raise DataError(f"cannot read {what} {path}: unexpected array shape {out.shape}")
    return out


def read_unit(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Decode ``path`` to float32 [0, 1] (H×W or H×W×C) as displayed; DataError naming the file if it cannot be
    read."""
    return _array_to_unit(_decode(path, what))


def decoded_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(height, width) as displayed, after a full decode by the same reader as :func:`read_unit` (a truncated file,
    which passes a header check, fails here); DataError naming the file if it cannot be read."""
    a = _decode(path, what)
    return int(a.shape[0]), int(a.shape[1])


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image file as RGB float32 H×W×3 in [0, 1] (see the module notes on modes)."""
    a = read_unit(path, "image")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 2:  # grey + alpha (tifffile)
        a = np.repeat(a[..., :1], 3, axis=2)
    elif a.shape[2] > 3:
        a = a[..., :3]
    return np.ascontiguousarray(a, dtype=np.float32)


def _mask_plane(a: np.ndarray) -> np.ndarray:
    """One H×W plane of a decoded mask: the channel maximum; alpha dropped unless the colour is all zero and the
    alpha varies (a mask drawn in the alpha channel)."""
    if a.ndim == 2:
        return a
    channels = a.shape[2]
    if channels in (2, 4):
        colour, alpha = a[..., : channels - 1], a[..., channels - 1]
        if not colour.any() and alpha.min() != alpha.max():
            return alpha
        a = colour
    return a.max(axis=2)


def load_mask(path: str | os.PathLike, rule: MaskRule = "half") -> np.ndarray:
    """Read a mask file as float32 H×W in {0, 1} (1 = defect): integer masks holding only 0 and 1 as they are,
    others > 0.5 of the full range (``"half"``) or > 0 (``"nonzero"``); see the module notes."""
    a = _mask_plane(_decode(path, "mask", keep_alpha=True))
    if a.dtype.kind in "bui" and a.size and int(a.min()) >= 0 and int(a.max()) <= 1:
        return (a > 0).astype(np.float32)  # a 0/1 mask (8- or 16-bit): 1 is the defect, not 1/255 of the range
    return (_array_to_unit(a) > (0.0 if rule == "nonzero" else 0.5)).astype(np.float32)


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) as displayed, from the file header, without decoding the pixels (a truncated file passes:
    :func:`decoded_size` decodes)."""
    try:
        with Image.open(path) as img:
            h, w = img.size[1], img.size[0]
            if img.format == "TIFF":  # PIL gives a TIFF's size as displayed already (and applies it on load)
                return h, w
            # PNG keeps EXIF anywhere (PIL would decode the pixels to look after the image data): only a header one
            orientation = 1 if img.format == "PNG" and "exif" not in img.info else _orientation(img)
            return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {_reason(exc)}") from None


def _resize_plane(plane: np.ndarray, h: int, w: int) -> np.ndarray:
    """One float32 plane squash-resized with PIL's bilinear filter (support widened when shrinking, i.e.
    antialiased; identical to ``torch.nn.functional.interpolate(..., antialias=True)`` to 1e-6, and faster)."""
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Float H×W×C (or H×W, replicated to RGB) → float32 tensor 3×S×S (squash resize, bilinear with
    antialiasing), clamped to [0, 1]. Grey input is resized once."""
    h, w = (size, size) if isinstance(size, int) else size
    a = np.asarray(image, dtype=np.float32)
    planes = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[2])]
    if a.shape[:2] != (h, w):
        planes = [_resize_plane(p, h, w) for p in planes]
    out = np.stack(planes, axis=0)
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    t = torch.from_numpy(np.ascontiguousarray(out))
    return t.clamp_(0.0, 1.0)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Binary H×W mask → float32 tensor 1×S×S in {0, 1}: resized as a float (bilinear, antialiased), then > 0.5."""
    h, w = (size, size) if isinstance(size, int) else size
    a = np.asarray(mask, dtype=np.float32)
    if a.shape != (h, w):
        a = _resize_plane(a, h, w)
    return torch.from_numpy((a > 0.5).astype(np.float32))[None]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | os.PathLike, *, recursive: bool = False, exclude_mask_suffix: bool = False,
                extensions: Iterable[str] = IMAGE_EXTENSIONS, what: str = "image folder") -> list[Path]:
    """Image files in ``folder`` sorted by path; DataError if the folder is missing or holds no images.

    ``exclude_mask_suffix`` skips ``*_mask.*`` files (masks stored beside their images)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} not found: {folder}" if not folder.exists() else f"{what} is not a folder: {folder}")
    exts = {e.lower() for e in extensions}
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in it if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()
                   and not (exclude_mask_suffix and p.stem.lower().endswith("_mask")))
    if not files:
        raise DataError(f"no images ({', '.join(sorted(exts))}) in {what}: {folder}")
    return files


def index_by_stem(files: Iterable[Path]) -> dict[str, Path]:
    """Map file stems to paths (first in sorted order wins)."""
    out: dict[str, Path] = {}
    for p in sorted(files):
        out.setdefault(p.stem, p)
    return out
