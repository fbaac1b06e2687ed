"""The split's images at the backbone's working size, for training and evaluation.

Stage `pack` decodes every image once into data/store (transfer.data.store), at a short side of
pack.short_side. Training and evaluation read images from there as uint8 tensors whose short side is
the backbone's working size (`resize_size`, the short side before the crop): held in memory while the
split fits `train.memory_budget_mb`, read from the store image by image beyond it, so that memory does
not grow with the dataset. Each epoch then only crops, flips and normalises (transfer.data.transforms).
The tutorials' loop decodes every JPEG every epoch instead."""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from transfer.core.errors import UserError
from transfer.core.paths import RAW_DIR
from transfer.data.decode import UnreadableImage, check_resize, open_rgb
from transfer.data.split_files import read_split

Images = Sequence[torch.Tensor]  # uint8 CHW, short side = preprocess["resize_size"]: a list, or read on access


@dataclass
class TrainData:
    """The train and val images of a run, at the working size of its backbone."""
    train_images: Images
    train_labels: list[int]
    val_images: Images
    val_labels: list[int]
    preprocess: dict


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

        self.store = ImageStore(split)
        self.preprocess = preprocess
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
    train = read_split("train")
    val = read_split("val")
    share = budget_mb * len(train.paths) / max(1, len(train.paths) + len(val.paths))
    return TrainData(load_images("train", preprocess, share), train.labels,
                     load_images("val", preprocess, budget_mb - share), val.labels, preprocess)


class TensorImages(torch.utils.data.Dataset):
    """Decoded images + labels, transformed on access.

    A key is (index, seed), as transfer.training.image_batches.EpochSampler makes them: the augmentation draws from
    that seed alone, so the view of an image depends on the run's seed, the epoch and the index, never
    on which loader worker happens to make it, how many workers there are, or a resume."""

    def __init__(self, images: list[torch.Tensor], labels: list[int], transform):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream as it was
            torch.manual_seed(seed)
            return self.transform(self.images[i]), self.labels[i]
