"""The near-duplicate criterion split groups by (transfer.data.grouping), measured:

  python -m bench.duplicates calibrate --zip PATH   planted copies (re-encodes at JPEG quality 50-90,
      resizes, small crops) of every photo of a dataset archive against the distinct photos of each class:
      recall per kind of copy and false pairs per threshold, hashed exactly as split hashes (draft decode)
  python -m bench.duplicates frames                 synthetic "scenes" filmed as frames with small shifts
      and noise, split at random with and without grouping: a 1-nearest-neighbour classifier's val
      accuracy against its accuracy on frames of new scenes (test), Fisher's exact test between them

Both print a table; neither needs the pipeline's data (the archive is any zip of class folders)."""
from __future__ import annotations

import argparse
import io
import tempfile
import zipfile
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from transfer.data.decode import open_rgb
from transfer.data.grouping import MAX_BITS, MAX_LEVELS, close_thumbnails
from transfer.data.hashing import dhashes, thumbnail
from transfer.data.splitting import CHECK_SIZE

BITS = (4, 6, 8, 10, 12)
LEVELS = (2.0, 4.0, 8.0, 255.0)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _crop(image: Image.Image, fraction: float) -> Image.Image:
    """`fraction` of each side cut off, kept at the smaller size (a re-framed copy)."""
    w, h = image.size
    dx = int(w * fraction)
    dy = int(h * fraction)
    return image.crop((dx, dy, w - dx, h - dy))


COPIES = {
    "jpeg q50": lambda im: _jpeg(im, 50),
    "jpeg q70": lambda im: _jpeg(im, 70),
    "jpeg q90": lambda im: _jpeg(im, 90),
    "resize 50% + q75": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC), 75),
    "resize 75%": lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BILINEAR),
    "crop 2% a side": lambda im: _crop(im, 0.02),
    "crop 5% a side": lambda im: _crop(im, 0.05),
}


def split_thumbnail(image: Image.Image, folder: Path, name: str) -> bytes:
    """The thumbnail split computes for this picture saved as a JPEG file: the same draft decode."""
    path = folder / f"{name}.jpg"
    image.convert("RGB").save(path, "JPEG", quality=95)
    return thumbnail(open_rgb(path, draft_size=CHECK_SIZE))


def distance(a: bytes, b: bytes) -> tuple[int, float]:
    """(dHash bits apart, mean absolute difference of the thumbnails) of two thumbnails."""
    small = np.frombuffer(a + b, dtype=np.uint8).reshape(2, -1)
    hashes = dhashes(small)
    return int(np.bitwise_count(hashes[0] ^ hashes[1])), float(np.abs(small[0].astype(int) - small[1]).mean())


def _photos(archive: Path) -> dict[str, list[Image.Image]]:
    """{class folder: photos} of every JPEG in the archive, by its parent folder's name."""
    found: dict[str, list[Image.Image]] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(zf.namelist()):
            if name.lower().endswith((".jpg", ".jpeg")):
                image = Image.open(io.BytesIO(zf.read(name)))
                image.load()
                found.setdefault(Path(name).parent.name, []).append(image.convert("RGB"))
    return found


def calibrate(archive: Path) -> None:
    photos = _photos(archive)
    copies: dict[str, list[tuple[int, float]]] = {kind: [] for kind in COPIES}
    distinct: list[tuple[int, float]] = []
    planted: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, images in photos.items():
            originals = [split_thumbnail(im, folder, f"{label}{i}") for i, im in enumerate(images)]
            distinct += [distance(a, b) for a, b in combinations(originals, 2)]
            for i, (image, original) in enumerate(zip(images, originals, strict=True)):
                for kind, make in COPIES.items():
                    copy = split_thumbnail(make(image), folder, f"{label}{i}copy")
                    copies[kind].append(distance(original, copy))
                    planted += [original, copy]
    found = {(int(i), int(j)) for i, j in close_thumbnails(planted)}
    print(f"{sum(len(v) for v in photos.values())} photos of {len(photos)} classes, {len(COPIES)} copies each; "
          f"{len(distinct)} pairs of distinct photos of one class")
    print("bits levels " + "  ".join(f"{kind:>16}" for kind in COPIES) + "   all copies  false pairs  precision")
    for bits in BITS:
        for levels in LEVELS:
            within = lambda pairs, bits=bits, levels=levels: np.array([b <= bits and d <= levels for b, d in pairs])
            hits = sum(int(within(pairs).sum()) for pairs in copies.values())
            false = int(within(distinct).sum())
            print(f"{bits:>4} {levels:>6.0f} " + "  ".join(f"{within(d).mean():>16.3f}" for d in copies.values())
                  + f"   {hits / len(planted) * 2:>10.3f}  {false:>11}  {hits / max(1, hits + false):>9.3f}"
                  + ("   <- split's criterion" if (bits, levels) == (MAX_BITS, MAX_LEVELS) else ""))
    share = sum((2 * k, 2 * k + 1) in found for k in range(len(planted) // 2)) / (len(planted) // 2)
    print(f"split's search (band buckets, then the criterion) finds {share:.3f} of the copies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="tool", required=True)
    sub.add_parser("calibrate").add_argument("--zip", type=Path, required=True, help="a zip of class folders")
    frames_parser = sub.add_parser("frames")
    frames_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.tool == "calibrate":
        calibrate(args.zip)
    else:
        from bench.frames import frames_check

        frames_check(args.seed)


if __name__ == "__main__":
    main()
