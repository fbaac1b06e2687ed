"""Opening any image file as 8-bit RGB: the one way every stage reads pixels, so that `split` skips
exactly the files that training could not read."""
from __future__ import annotations

import os
import struct
import warnings
import zlib

from PIL import Image, ImageOps, UnidentifiedImageError

ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
HIGH_DEPTH_GRAY = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# What PIL's decoders raise on malformed input; anything else is a bug worth a traceback.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
DEFAULT_PIXEL_LIMIT = 89_478_485  # PIL's own Image.MAX_IMAGE_PIXELS, where a caller has switched it off


class UnreadableImage(Exception):
    """A file that cannot be used as an image; str() is a short reason such as "truncated image"."""


def open_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """The image at `path`, upright (EXIF orientation), fully decoded, as 3-channel 8-bit RGB.

    `draft_size`: the short side the caller will resize to. A JPEG whose short side is at least twice
    that is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's draft mode), its short side
    still >= `draft_size`: several times faster on large photos, and within a few levels of a full
    decode once resized (tests/test_store.py measures it). Any other image is decoded in full."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                if draft_size and img.format == "JPEG" and min(img.size) >= 2 * draft_size:
                    # Asks for both sides >= draft_size: the short side too, whichever way it is rotated.
                    img.draft("RGB", (draft_size, draft_size))
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UnreadableImage("larger than the decompression-bomb limit "
                                  f"({Image.MAX_IMAGE_PIXELS} pixels)") from None
        except UnidentifiedImageError:
            raise UnreadableImage("empty file" if os.path.getsize(path) == 0 else "not an image") from None
        except DECODE_ERRORS as err:
            if isinstance(err, EOFError) or "truncated" in str(err).lower():
                raise UnreadableImage("truncated image") from None
            detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            raise UnreadableImage(f"corrupt image ({detail})") from None


def check_resize(size: tuple[int, int], short_side: int) -> None:
    """Refuse a resize whose result is over the decompression-bomb limit: a 1 x 300,000 px PNG of a
    few hundred bytes passes that limit when decoded, but at a short side of 224 px it is 67 million px
    long (15 billion pixels, tens of GB)."""
    width, height = size
    short = min(width, height)
    long = max(width, height)
    limit = Image.MAX_IMAGE_PIXELS or DEFAULT_PIXEL_LIMIT
    resized_long = long * short_side // max(short, 1)
    if resized_long * short_side > limit:
        raise UnreadableImage(f"{width}x{height} px: at a short side of {short_side} px it would be "
                              f"{resized_long} px long, over the decompression-bomb limit ({limit} pixels)")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in HIGH_DEPTH_GRAY:
        return _gray_to_8bit(img).convert("RGB")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        # Transparent pixels often hold arbitrary colours (black, mostly): show them as white paper.
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _gray_to_8bit(img: Image.Image) -> Image.Image:
    """PIL's own conversion clips every value above 255 to white: map the value range instead."""
    if img.mode.startswith("I;16"):
        low = 0
        high = 65535
    else:
        low, high = img.getextrema()
        if low >= 0:  # the smallest usual full scale that holds the values: 0..1, 8 or 16 bit
            low = 0
            high = next(top for top in (1, 255, 65535, high) if high <= top)
    scale = 255 / (high - low) if high > low else 1.0
    return img.convert("F").point(lambda v: v * scale - low * scale).convert("L")
