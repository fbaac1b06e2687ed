"""transfer.data.decode.open_rgb(path, draft_size): large JPEGs decoded at a DCT scale (PIL's draft mode),
as stage `pack` decodes them, against a full decode."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from transfer.data.decode import open_rgb
from transfer.data.images import resize_short_side

# Draft-mode decoding of a large JPEG against a full decode, both resized to the same short side:
# measured on photo() images of 600x520 to 2000x1500 (quality 92) at short sides 37 and 256, so at
# 2x-8x: mean absolute difference 0.3-1.0 of 255 per channel value, 99th percentile 2-11, max 3-37
# (at sharp edges); decoding 2000x1500 took 18 ms instead of 75, 1024x768 at 37 px 2 ms instead of 27.
DRAFT_MEAN_TOLERANCE = 2.0
DRAFT_P99_TOLERANCE = 16


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A photo-like image: smooth colour waves, grain, and sharp-edged blobs."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    waves = np.stack([128 + 100 * np.sin(x / (w / 3.1) + c) * np.cos(y / (h / 2.3)) for c in range(3)], -1)
    pixels = np.clip(waves + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.5))
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x0, y0 = rng.integers(w), rng.integers(h)
        draw.ellipse([x0, y0, x0 + rng.integers(20, w // 4), y0 + rng.integers(20, h // 4)],
                     fill=tuple(int(c) for c in rng.integers(256, size=3)))
    return image


@pytest.mark.parametrize("size, draft_scale", [((1280, 960), 2), ((2100, 1100), 4)])
def test_draft_decode_of_a_large_jpeg_is_close(tmp_path, size, draft_scale):
    """A JPEG with a short side >= 2x the target decodes at a DCT scale whose short side is still
    >= the target, upright (EXIF orientation applied after), within the stated tolerance."""
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    photo(size).save(path, quality=92, exif=exif)
    target = 256 if draft_scale == 4 else 480
    drafted = open_rgb(path, draft_size=target)
    full = open_rgb(path)
    assert full.size == size[::-1]  # upright: rotated
    assert drafted.size == (-(-size[1] // draft_scale), -(-size[0] // draft_scale))
    fast, exact = (resize_short_side(image, target, "bicubic") for image in (drafted, full))
    assert fast.shape == exact.shape
    diff = (fast.int() - exact.int()).abs().flatten().float()
    mean, p99 = float(diff.mean()), float(diff.quantile(0.99))
    assert mean < DRAFT_MEAN_TOLERANCE and p99 < DRAFT_P99_TOLERANCE, (mean, p99)


@pytest.mark.parametrize("name, fmt", [("almost.jpg", "JPEG"), ("big.png", "PNG")])
def test_draft_leaves_other_images_exact(tmp_path, name, fmt):
    """A JPEG under 2x the target, and any non-JPEG, is decoded in full: the very same pixels."""
    path = tmp_path / name
    photo((500, 400) if fmt == "JPEG" else (1200, 900)).save(path, format=fmt)
    assert np.array_equal(np.asarray(open_rgb(path, draft_size=256)), np.asarray(open_rgb(path)))
