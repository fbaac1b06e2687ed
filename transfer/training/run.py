"""One training run of a mode, as the train stage, the bench tools and the tests make it: the seeded
model, its data at the mode's working size, and the loop (in this process, or as one of several)."""
from __future__ import annotations

import torch

from transfer.core.devices import pick_device
from transfer.core.settings import ModeSettings
from transfer.core.stage import log
from transfer.data.images import TrainData, store_splits
from transfer.data.transforms import working_preprocess
from transfer.models.backbones import TransferNet, build_model
from transfer.training.distributed import OneProcess
from transfer.training.loop import FitResult, ResumeState, fit
from transfer.training.trainable import check_top_blocks


def new_model(settings: ModeSettings, num_classes: int) -> tuple[TransferNet, dict]:
    """The mode's network, seeded, and its preprocessing at the mode's working size."""
    torch.manual_seed(settings.seed)
    model, preprocess = build_model(settings.arch, num_classes, settings.pretrained)
    return model, working_preprocess(preprocess, settings.image_size)


def run_training(settings: ModeSettings, num_classes: int, resume: ResumeState, make_data=None,
                 before_training=None, on_epoch=None, strategy: OneProcess | None = None
                 ) -> tuple[TransferNet, TrainData, FitResult]:
    """The whole set-up of a training run, shared by the stage, the bench scripts and the tests:
    build the seeded model, get the data at its working size (`make_data(preprocess)`; by default
    data/store within train.memory_budget_mb), fit (in this process, or as one of `strategy`'s)."""
    strategy = strategy or OneProcess(pick_device(settings.device))
    device = strategy.device
    model, preprocess = new_model(settings, num_classes)
    check_top_blocks(model, settings.arch, settings.phases, f"modes.{settings.mode}")
    data = make_data(preprocess) if make_data else store_splits(preprocess, settings.memory_budget_mb)
    where = f"{device} x {strategy.world_size} processes" if strategy.world_size > 1 else str(device)
    log(f"train@{settings.mode}: {settings.arch} ({'ImageNet' if settings.pretrained else 'random'} init) "
        f"on {where}, {len(data.train_labels)} train / {len(data.val_labels)} val images "
        f"at {preprocess['image_size']} px")
    if before_training:
        before_training(model)
    return model, data, fit(model, data, settings, device, resume, on_epoch, strategy)
