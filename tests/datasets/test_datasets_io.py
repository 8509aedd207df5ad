"""Image/mask reading (every mode), binarisation, resizing and the errors of ssmad.datasets.io."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from ssmad_dataset_fixtures import H as H_
from ssmad_dataset_fixtures import W as W_
from ssmad_dataset_fixtures import box_mask, rgb, save

from ssmad.core import DataError
from ssmad.datasets import (
    Entry,
    decoded_size,
    list_images,
    load_entry,
    load_image,
    load_mask,
    read_size,
    resize_image,
    resize_mask,
)
from ssmad.datasets.io import orient_array


def test_modes_become_rgb_float(tmp_path):
    a = rgb(0)
    cases = {
        "rgb.png": (a, None, a / 255.0),
        "gray.png": (a[..., 0], None, np.repeat(a[..., :1], 3, 2) / 255.0),
        "rgba.png": (np.dstack([a, np.full(a.shape[:2], 7, np.uint8)]), None, a / 255.0),
        "bits.png": ((a[..., 0] > 127).astype(np.uint8) * 255, "1", np.repeat((a[..., :1] > 127), 3, 2) * 1.0),
        "la.png": (a[..., 0], "LA", np.repeat(a[..., :1], 3, 2) / 255.0),
    }
    for name, (arr, mode, expected) in cases.items():
        out = load_image(save(tmp_path / name, arr, mode))
        assert out.shape == a.shape and out.dtype == np.float32, name
        np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=name)


def test_palette_and_cmyk(tmp_path):
    a = rgb(1)
    p = save(tmp_path / "pal.png", a, mode="P")
    expected = np.asarray(Image.open(p).convert("RGB")) / 255.0
    np.testing.assert_allclose(load_image(p), expected, atol=1e-6)
    c = tmp_path / "cmyk.jpg"
    Image.fromarray(a).convert("CMYK").save(c)
    out = load_image(c)
    assert Image.open(c).mode == "CMYK" and out.shape == a.shape
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    v = np.array([[0, 255, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    for name in ("g16.png", "g16.tif"):
        out = load_image(save(tmp_path / name, v))
        np.testing.assert_allclose(out[0, :, 0], [0.0, 255 / 65535, 32768 / 65535, 1.0], atol=1e-6)
        assert np.ptp(out[..., 0] - out[..., 2]) == 0  # grey replicated


def test_int32_mode_i_tiff(tmp_path):
    v = np.array([[0, 32768, 65535, 1000]], dtype=np.int32).repeat(3, 0)
    p = tmp_path / "i32.tif"
    Image.fromarray(v).save(p)
    assert Image.open(p).mode == "I"
    np.testing.assert_allclose(load_image(p)[0, :, 0], [0.0, 32768 / 65535, 1.0, 1000 / 65535], atol=1e-6)


def test_float_tiff(tmp_path):
    v = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    p = tmp_path / "f.tif"
    Image.fromarray(v, mode="F").save(p)
    np.testing.assert_allclose(load_image(p)[..., 1], v, atol=1e-6)


def test_sixteen_bit_rgb_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    v = np.zeros((6, 5, 3), np.uint16)
    v[..., 0], v[..., 1], v[..., 2] = 65535, 32768, 1000
    p = tmp_path / "rgb16.tif"
    tifffile.imwrite(p, v, photometric="rgb")
    out = load_image(p)
    np.testing.assert_allclose(out[0, 0], [1.0, 32768 / 65535, 1000 / 65535], atol=1e-6)


def test_masks_binarised_at_half(tmp_path):
    values = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
    out = load_mask(save(tmp_path / "aa.png", values))
    np.testing.assert_array_equal(out, [[0, 0, 0, 1, 1, 1]])
    assert out.dtype == np.float32
    m16 = np.array([[0, 30000, 40000, 65535]], np.uint16)
    np.testing.assert_array_equal(load_mask(save(tmp_path / "m16.png", m16)), [[0, 0, 1, 1]])
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)  # a red annotation counts (channel maximum)
    np.testing.assert_array_equal(load_mask(save(tmp_path / "c.png", colour)), [[1, 0], [0, 0]])
    bits = save(tmp_path / "b.png", box_mask(), mode="1")
    np.testing.assert_array_equal(load_mask(bits), box_mask() / 255)
    labels = box_mask(value=2)  # label-valued mask (VisA): only the nonzero rule sees it
    p = save(tmp_path / "lab.png", labels)
    assert load_mask(p).sum() == 0
    np.testing.assert_array_equal(load_mask(p, "nonzero"), labels > 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_zero_one_masks_are_binary(tmp_path, dtype):
    """A mask holding only 0 and 1 (8- or 16-bit) is a binary mask, not 1/255 (1/65535) of the range."""
    m = box_mask(value=1).astype(dtype)
    p = save(tmp_path / f"m01_{np.dtype(dtype).itemsize}.png", m)
    for rule in ("half", "nonzero"):
        out = load_mask(p, rule)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, m)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[1, 2] = (0, 1, 0)  # 0/1 in one colour channel
    np.testing.assert_array_equal(load_mask(save(tmp_path / "c01.png", colour)), colour.max(2))
    ones_and_more = box_mask(value=1)
    ones_and_more[0, 0] = 2  # not a 0/1 mask: the range rule applies (nothing above half)
    assert load_mask(save(tmp_path / "m012.png", ones_and_more)).sum() == 0


def test_mask_in_the_alpha_channel(tmp_path):
    rgba = np.zeros((H_, W_, 4), np.uint8)
    rgba[..., 3] = box_mask(H_, W_)  # colour all zero, the drawing in the alpha
    np.testing.assert_array_equal(load_mask(save(tmp_path / "alpha.png", rgba)), box_mask(H_, W_) / 255)
    la = np.zeros((H_, W_, 2), np.uint8)
    la[..., 1] = box_mask(H_, W_)
    np.testing.assert_array_equal(load_mask(save(tmp_path / "la.png", la)), box_mask(H_, W_) / 255)
    opaque_black = np.zeros((H_, W_, 4), np.uint8)
    opaque_black[..., 3] = 255  # a uniform alpha draws nothing: an empty mask, not a full one
    assert load_mask(save(tmp_path / "black.png", opaque_black)).sum() == 0
    drawn = np.zeros((H_, W_, 4), np.uint8)
    drawn[..., 0] = box_mask(H_, W_)
    drawn[..., 3] = 255 - box_mask(H_, W_)  # colour present: the alpha is dropped as before
    np.testing.assert_array_equal(load_mask(save(tmp_path / "drawn.png", drawn)), box_mask(H_, W_) / 255)


def _exif_file(path, array: np.ndarray, orientation: int):
    ex = Image.Exif()
    ex[0x0112] = orientation
    Image.fromarray(array).save(path, exif=ex.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path, orientation):
    """Images and masks are read as displayed: the EXIF orientation is applied (as ImageOps.exif_transpose)."""
    a = np.zeros((H_, W_, 3), np.uint8)
    a[2:6, 3:12] = (255, 128, 0)  # an asymmetric block: every orientation puts it elsewhere
    p = _exif_file(tmp_path / f"o{orientation}.png", a, orientation)  # lossless: exact comparisons
    with Image.open(p) as img:
        shown = np.asarray(ImageOps.exif_transpose(img))
    assert (shown.shape[:2] == (W_, H_)) == (orientation >= 5)
    out = load_image(p)
    np.testing.assert_allclose(out, shown / 255.0, atol=1e-6)
    assert read_size(p) == out.shape[:2] == decoded_size(p)
    np.testing.assert_array_equal(load_mask(p), shown.max(axis=2) > 127)
    np.testing.assert_array_equal(orient_array(a, orientation), shown)  # the numpy twin (16-bit colour TIFFs)
    jpeg = _exif_file(tmp_path / f"o{orientation}.jpg", a, orientation)
    assert load_image(jpeg).shape == shown.shape and read_size(jpeg) == shown.shape[:2]


def test_exif_orientation_of_sixteen_bit_colour_tiff(tmp_path):
    """tifffile's full-depth array of a TIFF with an orientation tag is turned like PIL turns the image."""
    tifffile = pytest.importorskip("tifffile")
    v = np.zeros((6, 5, 3), np.uint16)
    v[0, :2, 0] = 65535
    v[..., 1] = 1000
    p = tmp_path / "o6.tif"
    tifffile.imwrite(p, v, photometric="rgb", extratags=[(0x0112, "H", 1, 6, False)])
    out = load_image(p)
    np.testing.assert_allclose(out[..., 0], np.rot90(v[..., 0], -1) / 65535, atol=1e-6)  # 90° clockwise
    np.testing.assert_allclose(out[..., 1], 1000 / 65535, atol=1e-6)  # full depth kept
    assert read_size(p) == decoded_size(p) == (5, 6)


def test_exif_orientation_image_and_mask_fit(tmp_path):
    """A phone JPEG stored landscape, shown portrait, with its mask drawn on the shown picture: they line up."""
    a = rgb(7, H_, W_)
    shown_mask = np.zeros((W_, H_), np.uint8)
    shown_mask[1:5, 2:9] = 255
    img = _exif_file(tmp_path / "phone.jpg", a, 6)
    m = save(tmp_path / "phone_mask.png", shown_mask)
    s = load_entry(Entry(path=str(img), label=1, mask_path=str(m)), 16)  # would fail: 28×20 vs 20×28
    assert s.original_size == (W_, H_) and float(s.mask.sum()) > 0


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
@pytest.mark.parametrize("payload", [b"Exif\x00\x00MM\x00*\x00\x00\x00\xff", b"Exif\x00\x00XX",
                                     b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00"
                                     b"\x00\x01\x00\x09\x00\x00"])  # truncated, not TIFF, orientation 9
def test_bad_exif_does_not_make_an_image_unreadable(tmp_path, payload):
    p = tmp_path / "badexif.jpg"
    Image.fromarray(rgb(8)).save(p, exif=payload)
    assert load_image(p).shape == (H_, W_, 3) and read_size(p) == (H_, W_)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"GIF89a not really"])
def test_corrupt_files(tmp_path, content):
    p = tmp_path / "broken.png"
    p.write_bytes(content)
    with pytest.raises(DataError, match="broken.png") as exc:
        load_image(p)
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match="broken.png"):
        load_mask(p)


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    save(p, rgb(3, 64, 64))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")


def test_list_images(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path / "e")
    save(tmp_path / "e" / "b.png", rgb(0))
    save(tmp_path / "e" / "a.JPG", rgb(1))
    save(tmp_path / "e" / "a_mask.png", box_mask())
    assert [p.name for p in list_images(tmp_path / "e")] == ["a.JPG", "a_mask.png", "b.png"]
    assert [p.name for p in list_images(tmp_path / "e", exclude_mask_suffix=True)] == ["a.JPG", "b.png"]


# ---- resizing ----------------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(h=st.integers(4, 40), w=st.integers(4, 40), size=st.integers(4, 48), seed=st.integers(0, 2**31))
def test_resize_properties(h, w, size, seed):
    rng = np.random.default_rng(seed)
    img = rng.random((h, w, 3), dtype=np.float32)
    t = resize_image(img, size)
    assert t.shape == (3, size, size) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    mask = (rng.random((h, w)) > 0.7).astype(np.float32)
    m = resize_mask(mask, size)
    assert m.shape == (1, size, size) and m.dtype == torch.float32
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(resize_mask(np.ones((h, w), np.float32), size).numpy(), 1.0)


def test_resize_mask_keeps_area_not_truncated():
    mask = np.zeros((64, 64), np.float32)
    mask[8:40, 16:48] = 1.0  # 32×32 block
    m = resize_mask(mask, 16)
    assert int(m.sum()) == 8 * 8  # same fraction of the image: nothing lost to truncation
    up = resize_mask(m.numpy()[0], 64)
    assert abs(int(up.sum()) - 32 * 32) <= 2 * 32
    same = resize_image(np.full((10, 10, 3), 0.25, np.float32), 10)
    np.testing.assert_allclose(same.numpy(), 0.25)


def test_load_entry_sizes_and_mask_policy(tmp_path):
    img = save(tmp_path / "i.png", rgb(0, 20, 28))
    half = save(tmp_path / "half.png", box_mask(10, 14, (0, 0, 10, 14)))  # same aspect, half size
    s = load_entry(Entry(path=str(img), label=1, defect_type="x", mask_path=str(half)), 16)
    assert s.original_size == (20, 28) and s.image.shape == (3, 16, 16) and float(s.mask.min()) == 1.0
    wrong = save(tmp_path / "square.png", box_mask(20, 20))
    with pytest.raises(DataError, match="square.png"):
        load_entry(Entry(path=str(img), label=1, mask_path=str(wrong)), 16)
    normal = load_entry(Entry(path=str(img), label=0, mask_path=str(half)), 16)
    assert float(normal.mask.sum()) == 0.0  # a normal image's mask is always zero
