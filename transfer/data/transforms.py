"""The transforms between the split's decoded images (transfer.data.images) and the network: the
backbone's working preprocessing, the eval crop, the seeds' augmentations, and normalised batches."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from transfer.core.settings import Augment
from transfer.data.images import Images, resize_short_side


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


def working_preprocess(preprocess: dict, image_size: int | None) -> dict:
    """The backbone's preprocessing, at train.image_size when that is set (same resize/crop ratio)."""
    if not image_size or image_size == preprocess["image_size"]:
        return dict(preprocess)
    ratio = preprocess["resize_size"] / preprocess["image_size"]
    return {**preprocess, "image_size": image_size, "resize_size": int(round(image_size * ratio))}
