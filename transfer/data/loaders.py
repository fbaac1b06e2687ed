"""Data for training and evaluation: the split's images at the backbone's working size, and their transforms.

Stage `pack` decodes every image once into data/store (transfer.data.store), at a short side of
pack.short_side. Training and evaluation read images from there as uint8 tensors whose short side is
the backbone's working size (`resize_size`, the short side before the crop): held in memory while the
split fits `train.memory_budget_mb`, read from the store image by image beyond it, so that memory does
not grow with the dataset. Each epoch then only crops, flips and normalises. The tutorials' loop
decodes every JPEG every epoch instead."""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from transfer.core.errors import UserError
from transfer.core.paths import CLASSES_JSON, RAW_DIR, SPLIT_DIR, split_csv
from transfer.core.settings import Augment
from transfer.data.decode import UnreadableImage, check_resize, open_rgb


@dataclass
class SplitRows:
    paths: list[str]  # relative to the raw data folder
    labels: list[int]


Images = Sequence[torch.Tensor]  # uint8 CHW, short side = preprocess["resize_size"]: a list, or read on access


@dataclass
class TrainData:
    """The train and val images of a run, at the working size of its backbone."""
    train_images: Images
    train_labels: list[int]
    val_images: Images
    val_labels: list[int]
    preprocess: dict


def read_split(name: str, split_dir: Path = SPLIT_DIR) -> SplitRows:
    path = split_dir / split_csv(name).name
    if not path.exists():
        raise UserError(f"{path}: missing; run the split stage first (dvc repro split)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return SplitRows([r["path"] for r in rows], [int(r["label"]) for r in rows])


def read_classes(split_dir: Path = SPLIT_DIR) -> list[dict]:
    path = split_dir / CLASSES_JSON.name
    if not path.exists():
        raise UserError(f"{path}: missing; run the split stage first (dvc repro split)")
    return json.loads(path.read_text(encoding="utf-8"))["classes"]


def resize_short_side(image: Image.Image, size: int, interpolation: str) -> torch.Tensor:
    """PIL image -> uint8 CHW tensor whose short side is `size` (the eval Resize of torchvision);
    UnreadableImage where the result would be over the decompression-bomb limit."""
    check_resize(image.size, size)
    resized = TF.resize(image, size, interpolation=InterpolationMode(interpolation), antialias=True)
    return TF.pil_to_tensor(resized)


def decode_all(paths: list[str], preprocess: dict, root: Path = RAW_DIR) -> list[torch.Tensor]:
    """Decode and resize every image once, on all cores (PIL releases the GIL while decoding)."""

    def load(rel: str) -> torch.Tensor:
        try:
            return resize_short_side(open_rgb(root / rel), preprocess["resize_size"], preprocess["interpolation"])
        except UnreadableImage as err:
            raise UserError(f"{root / rel}: unreadable image ({err}); re-run the split stage") from None
        except FileNotFoundError:
            raise UserError(f"{root / rel}: missing; data/raw and data/split disagree (dvc repro)") from None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(load, paths))


class StoreImages(Sequence):
    """A split of data/store at the working size: image i read on access, and resized only when the
    working short side differs from the store's (a smaller backbone size, scratch's 96 px)."""

    def __init__(self, split: str, preprocess: dict):
        from transfer.data.store import ImageStore

        self.store, self.preprocess = ImageStore(split), preprocess
        size = preprocess["resize_size"]
        if size > self.store.short_side:
            raise UserError(f"data/store: packed at a short side of {self.store.short_side} px, but the model's "
                            f"working size needs {size} px; set pack.short_side to {size} or more (dvc repro)")

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.store[i]
        size = self.preprocess["resize_size"]
        if min(image.shape[1:]) == size:
            return image
        return TF.resize(image, size, interpolation=InterpolationMode(self.preprocess["interpolation"]),
                         antialias=True)


def image_bytes(preprocess: dict) -> int:
    """About what one image takes in memory at the working size (a 4:3 photo, uint8 RGB)."""
    return preprocess["resize_size"] ** 2 * 4 // 3 * 3


def load_images(split: str, preprocess: dict, budget_mb: float) -> Images:
    """The split's images from data/store: all in memory when they fit `budget_mb` (read once, on all
    cores), else read from the store on access."""
    images = StoreImages(split, preprocess)
    if len(images) * image_bytes(preprocess) > budget_mb * 2**20:
        return images
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(images.__getitem__, range(len(images))))


def store_splits(preprocess: dict, budget_mb: float) -> TrainData:
    """The train and val images of data/store, with their labels, within a memory budget shared by both."""
    train, val = read_split("train"), read_split("val")
    share = budget_mb * len(train.paths) / max(1, len(train.paths) + len(val.paths))
    return TrainData(load_images("train", preprocess, share), train.labels,
                     load_images("val", preprocess, budget_mb - share), val.labels, preprocess)


def _normalize(preprocess: dict) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess["mean"], preprocess["std"])]


def eval_transform_tensor(preprocess: dict) -> v2.Compose:
    """For decoded (already resized) uint8 tensors: center crop and normalise."""
    return v2.Compose([v2.CenterCrop(preprocess["image_size"]), *_normalize(preprocess)])


def eval_transform(preprocess: dict):
    """PIL RGB image -> normalised tensor, exactly as validation sees it during training."""
    on_tensor = eval_transform_tensor(preprocess)
    return lambda image: on_tensor(resize_short_side(image, preprocess["resize_size"], preprocess["interpolation"]))


def train_transform(preprocess: dict, augment: Augment) -> v2.Compose:
    """The seeds' augmentations, as chosen in params (train.augment), on decoded uint8 tensors.

    Training crops come out at `crop_size` px where that is set, validation stays at the image size:
    a random crop enlarges objects, so a network trained on smaller crops sees them at about the
    size it will meet at the full validation size (Touvron et al., "Fixing the train-test resolution
    discrepancy", 2019), and a step at 160 px costs half of one at 224."""
    size = augment.crop_size or preprocess["image_size"]
    steps: list = []
    if augment.rotation:
        steps.append(v2.RandomRotation(augment.rotation))
    if augment.crop_scale:
        steps.append(v2.RandomResizedCrop(size, scale=tuple(augment.crop_scale), antialias=True))
    else:
        steps.append(v2.CenterCrop(preprocess["image_size"]))
        if size != preprocess["image_size"]:
            steps.append(v2.Resize(size, antialias=True))
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip(augment.hflip))
    if augment.vflip:
        steps.append(v2.RandomVerticalFlip(augment.vflip))
    if augment.color_jitter:
        s = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    if augment.grayscale:
        steps.append(v2.RandomGrayscale(augment.grayscale))
    return v2.Compose(steps + _normalize(preprocess))


def crop_stack(images: Images, preprocess: dict, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Center-cropped uint8 batch of images[start:stop] (normalised per batch on the device)."""
    size = preprocess["image_size"]
    crop = eval_transform_tensor(preprocess).transforms[0]
    stop = len(images) if stop is None else min(stop, len(images))
    if stop <= start:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.stack([crop(images[i]) for i in range(start, stop)])


def eval_batches(images: Images, labels: list[int], preprocess: dict, batch_size: int):
    """Normalised center crops and labels, a batch at a time: no more than a batch in memory."""
    targets = torch.tensor(labels)
    for i in range(0, len(images), batch_size):
        yield from normalized_batches(crop_stack(images, preprocess, i, i + batch_size), targets[i:i + batch_size],
                                      preprocess, batch_size)


def normalized_batches(stack: torch.Tensor, labels: torch.Tensor, preprocess: dict, batch_size: int):
    """Float batches of a uint8 stack, normalised where the stack lives (on a GPU, the val stack does)."""
    mean = torch.tensor(preprocess["mean"], device=stack.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"], device=stack.device).view(1, 3, 1, 1)
    for i in range(0, len(stack), batch_size):
        yield (stack[i:i + batch_size].float() / 255 - mean) / std, labels[i:i + batch_size]


class TensorImages(torch.utils.data.Dataset):
    """Decoded images + labels, transformed on access.

    A key is (index, seed), as transfer.training.image_batches.EpochSampler makes them: the augmentation draws from
    that seed alone, so the view of an image depends on the run's seed, the epoch and the index, never
    on which loader worker happens to make it, how many workers there are, or a resume."""

    def __init__(self, images: list[torch.Tensor], labels: list[int], transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream as it was
            torch.manual_seed(seed)
            return self.transform(self.images[i]), self.labels[i]


def working_preprocess(preprocess: dict, image_size: int | None) -> dict:
    """The backbone's preprocessing, at train.image_size when that is set (same resize/crop ratio)."""
    if not image_size or image_size == preprocess["image_size"]:
        return dict(preprocess)
    ratio = preprocess["resize_size"] / preprocess["image_size"]
    return {**preprocess, "image_size": image_size, "resize_size": int(round(image_size * ratio))}
