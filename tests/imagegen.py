"""Generated image files for tests: small, real JPEG/PNG files whose class is learnable from colour."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

# A distinct colour per class, so that even one epoch of a tiny model can tell the classes apart.
PALETTE = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 200, 40), (160, 40, 160), (40, 180, 180)]


def make_image(label: int, seed: int, size=(48, 40), mode: str = "RGB") -> Image.Image:
    rng = random.Random(seed)
    base = PALETTE[label % len(PALETTE)]
    jitter = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base)
    img = Image.new("RGB", size, jitter)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        draw.rectangle([x0, y0, x0 + size[0] // 3, y0 + size[1] // 3],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    return img.convert(mode) if mode != "RGB" else img


def write_class_folders(root: Path, counts: dict[str, int], seed: int = 0, ext: str = "jpg") -> list[Path]:
    """root/<class>/<class>_<i>.<ext> for each class; returns the files written."""
    written = []
    for label, (name, count) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"{name}_{i:03d}.{ext}"
            make_image(label, seed * 100_000 + label * 1000 + i).save(path)
            written.append(path)
    return written


ARCHIVE_FORMATS = {".zip": "zip", ".tar": "tar", ".gz": "gztar", ".tgz": "gztar"}


def pack(folder: Path, archive: Path) -> Path:
    """Pack `folder`, its name kept as the top folder, into a .zip, .tar or .tar.gz named `archive`."""
    made = shutil.make_archive(str(archive.with_name(archive.name + ".packing")), ARCHIVE_FORMATS[archive.suffix],
                               root_dir=folder.parent, base_dir=folder.name)
    return Path(shutil.move(made, archive))


def tree_bytes(root: Path) -> dict[str, bytes]:
    """{relative POSIX path: content} of every file under `root`: to compare unpacked trees."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
