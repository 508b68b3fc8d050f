"""Image loading: RGB conversion, EXIF orientation, Qwen-VL style pixel budget, errors that name the file."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from qponder.data import fit_pixels, load_image, verify_image
from qponder.errors import QponderError


@given(h=st.integers(1, 5000), w=st.integers(1, 5000), f=st.sampled_from([1, 14, 28, 32]),
       max_px=st.integers(4 * 32 * 32, 3_000_000), ratio=st.floats(0.0, 0.25))
def test_fit_pixels_respects_budget_grid_and_aspect(h, w, f, max_px, ratio):
    assume(max(h, w) / min(h, w) <= 20)
    min_px = int(max_px * ratio)
    th, tw = fit_pixels(h, w, min_px or None, max_px, factor=f)
    assert th % f == 0 and tw % f == 0 and th >= f and tw >= f
    assert th * tw <= max_px
    if min_px and (max(h, w) / min(h, w)) <= 4 and min_px >= 16 * f * f:
        assert th * tw >= min_px
    # aspect kept up to rounding to the grid (one cell on each side)
    if th >= 8 * f and tw >= 8 * f:
        assert abs(math.log((th / tw) / (h / w))) < 0.3


@given(h=st.integers(1, 3000), w=st.integers(1, 3000))
def test_fit_pixels_identity_inside_budget(h, w):
    assert fit_pixels(h, w, None, None) == (h, w)
    assert fit_pixels(h, w, 1, h * w) == (h, w)


def test_fit_pixels_rejects_impossible_budgets():
    with pytest.raises(QponderError, match="larger than max_pixels"):
        fit_pixels(10, 10, 500, 100)
    with pytest.raises(QponderError, match="smaller than one 28x28 patch"):
        fit_pixels(10, 10, None, 100, factor=28)


def test_load_image_resizes_into_budget_and_keeps_aspect(tmp_path):
    p = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(p, quality=90)
    img = load_image(p, max_pixels=224 * 224)
    assert img.mode == "RGB"
    assert img.width * img.height <= 224 * 224
    assert (img.height, img.width) == fit_pixels(1500, 2000, None, 224 * 224)
    assert abs(img.width / img.height - 2000 / 1500) < 0.02
    grid = load_image(p, max_pixels=224 * 224, factor=28)
    assert grid.width % 28 == 0 and grid.height % 28 == 0 and grid.width * grid.height <= 224 * 224
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 20), (5, 6, 7)).save(small)
    up = load_image(small, min_pixels=56 * 56)
    assert up.width * up.height >= 56 * 56 and abs(up.height / up.width - 2) < 0.1
    assert load_image(small).size == (10, 20)


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)     # stored left half red
    arr[:, 20:] = (0, 0, 255)     # stored right half blue
    p = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6              # "rotate 90 degrees clockwise to display": stored left becomes the top
    Image.fromarray(arr).save(p, quality=95, exif=exif)
    img = load_image(p)
    assert img.size == (20, 40)
    top, bottom = np.asarray(img)[2, 10], np.asarray(img)[-3, 10]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60
    # the budget applies to the upright image
    small = load_image(p, max_pixels=200)
    assert small.height > small.width and small.width * small.height <= 200


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "LA"])
def test_modes_convert_to_rgb(tmp_path, mode):
    if mode == "RGBA":
        img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))       # fully transparent red -> white background
    elif mode == "LA":
        img = Image.new("LA", (8, 8), (0, 0))
    elif mode == "P":
        img = Image.new("P", (8, 8), 0)
        img.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    elif mode == "I;16":
        img = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    else:
        img = Image.new(mode, (8, 8))
    p = tmp_path / f"x.{'tif' if mode == 'CMYK' else 'png'}"
    img.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (8, 8)
    px = out.getpixel((0, 0))
    if mode in ("RGBA", "LA"):
        assert px == (255, 255, 255)
    if mode == "P":
        assert px == (10, 20, 30)
    if mode == "I;16":
        assert px == (255, 255, 255)


def test_unreadable_images_raise_naming_the_file(tmp_path):
    with pytest.raises(QponderError, match=r"nope\.png: image file not found"):
        load_image(tmp_path / "nope.png")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"definitely not a jpeg")
    with pytest.raises(QponderError, match=r"junk\.jpg: cannot read image"):
        load_image(junk)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(QponderError, match=r"cut\.jpg: cannot read image"):
        load_image(cut)
    assert verify_image(good) is None
    assert "corrupt" in verify_image(cut)
    assert verify_image(tmp_path / "nope.png") == "image file not found"
    assert verify_image(tmp_path) == "not a regular file"


def test_load_image_accepts_file_objects(tmp_path):
    import io

    buf = io.BytesIO()
    Image.new("RGBA", (300, 100), (0, 255, 0, 255)).save(buf, "PNG")
    buf.seek(0)
    img = load_image(buf, max_pixels=3000)
    assert img.mode == "RGB" and img.width * img.height <= 3000 and img.getpixel((0, 0)) == (0, 255, 0)
    with pytest.raises(QponderError, match="<image bytes>: cannot read image"):
        load_image(io.BytesIO(b"nope"))
