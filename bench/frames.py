"""bench.duplicates frames: synthetic near-duplicates (SYNTHETIC data, not a public dataset) to see what
grouping does to val. Each class is a stripe orientation; each "scene" a random smooth picture with its
class's stripes faint on top; each scene is filmed as FRAMES frames of a slow pan (each frame at most a
pixel from the last, each way, within SHIFT pixels) with pixel noise.
The scenes are split at random (random layout) by transfer.data.splitting with and without
data.group_duplicates; a 1-nearest-neighbour classifier on 16x16 grayscale pixels (one that memorises,
as leakage rewards) is scored on val and on the frames of new scenes (test)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench import ROOT
from transfer.core import params as params_module
from transfer.core.settings import SplitSettings, section
from transfer.data.splitting import make_split
from transfer.evaluation import stats

CLASSES = 3
SCENES = 20       # per class
FRAMES = 8        # per scene
SIZE = 64         # px
SHIFT = 3         # px, at most, each way from the scene's centre
NOISE = 12.0      # pixel noise (of 255)
STRIPES = 45.0    # amplitude of the class's stripes (of 255): the faint signal a model can learn


def scene_frames(label: int, rng: np.random.Generator) -> list[np.ndarray]:
    coarse = rng.uniform(0, 255, (6, 6))
    big = SIZE + 2 * SHIFT
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((big, big), Image.Resampling.BICUBIC), float)
    angle = np.pi * label / CLASSES
    y, x = np.mgrid[0:big, 0:big]
    picture = 0.8 * smooth + STRIPES * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / 8)
    frames = []
    dx = SHIFT
    dy = SHIFT
    for _ in range(FRAMES):  # a slow pan: each frame at most a pixel from the last, each way
        dx, dy = (int(np.clip(d + rng.integers(-1, 2), 0, 2 * SHIFT)) for d in (dx, dy))
        frame = picture[dy:dy + SIZE, dx:dx + SIZE] + rng.normal(0, NOISE, (SIZE, SIZE))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def write_scenes(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label in range(CLASSES):
        (folder / f"class{label}").mkdir(parents=True)
        for scene in range(SCENES):
            for i, frame in enumerate(scene_frames(label, rng)):
                Image.fromarray(frame).save(folder / f"class{label}" / f"s{scene:02d}_f{i}.png")


def features(raw: Path, paths: list[str]) -> np.ndarray:
    pixels = [np.asarray(Image.open(raw / p).convert("L").resize((16, 16), Image.Resampling.BOX), float)
              for p in paths]
    flat = np.stack([p.flatten() for p in pixels])
    return flat - flat.mean(1, keepdims=True)


def nearest_neighbour(train_x, train_y, x) -> np.ndarray:
    distances = (x**2).sum(1)[:, None] - 2 * x @ train_x.T + (train_x**2).sum(1)[None]
    return np.asarray(train_y)[distances.argmin(1)]


def scenes_split(rows) -> int:
    return len({p.split("_f")[0] for p, _ in rows})


def frames_check(seed: int) -> None:
    params = params_module.load(ROOT / "params.yaml")
    data = {**params["data"], "layout": "random", "test_fraction": 0}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        new = Path(tmp) / "new"
        write_scenes(raw, seed)
        write_scenes(new, seed + 1000)
        test_paths = sorted(p.relative_to(new).as_posix() for p in new.rglob("*.png"))
        test_x = features(new, test_paths)
        test_y = np.array([int(p[5]) for p in test_paths])
        print(f"SYNTHETIC: {CLASSES} classes x {SCENES} scenes x {FRAMES} frames, seed {seed}; "
              f"test: {len(test_paths)} frames of new scenes")
        test_right = {}
        for grouped in (False, True):
            split = make_split(raw, section({"data": {**data, "group_duplicates": grouped}}, "data", SplitSettings))
            train_x = features(raw, [p for p, _ in split.train])
            train_y = [label for _, label in split.train]
            val_right = int((nearest_neighbour(train_x, train_y, features(raw, [p for p, _ in split.val]))
                             == np.array([label for _, label in split.val])).sum())
            test_right[grouped] = nearest_neighbour(train_x, train_y, test_x) == test_y
            right = int(test_right[grouped].sum())
            both = {p.split("_f")[0] for p, _ in split.train} & {p.split("_f")[0] for p, _ in split.val}
            p = stats.two_proportions(val_right, len(split.val), right, len(test_y))
            print(f"group_duplicates {str(grouped).lower():5}: {split.near_duplicates['groups']} groups "
                  f"(largest {split.near_duplicates['largest_group']}), {split.near_duplicates['images_moved']} "
                  f"moved; scenes on both sides {len(both)} of {CLASSES * SCENES}; "
                  f"val {val_right}/{len(split.val)} ({val_right / len(split.val):.1%}), "
                  f"test {right}/{len(test_y)} ({right / len(test_y):.1%}), Fisher {stats.format_p(p)}")
        change = stats.paired(test_right[True], test_right[False])
        print(f"test with against without grouping, paired on the same frames: {change['only_a']} right only with, "
              f"{change['only_b']} only without, McNemar {stats.format_p(change['p'])}")
