"""Where a phase's batches come from.

The training loop asks a source for one epoch of training batches and for the val batches, and
trains and validates `source.module` on them; which part of the network that is, and what its input
looks like, is the source's business. Every batch arrives on the device, in its memory layout.

- `CachedFeatures` (transfer/training/feature_cache.py): the frozen prefix's outputs, computed once.
- `AugmentedImages` (transfer/training/image_batches.py): augmented image batches from a loader.

A new input (a store on disk, a shard of the data per process) is another class with these members."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from torch import nn

from transfer.models.backbones import TransferNet
from transfer.training.feature_cache import CachedFeatures
from transfer.training.image_batches import AugmentedImages
from transfer.training.phase_run import Batch, PhaseRun
from transfer.training.trainable import frozen_split


class Source(Protocol):
    module: nn.Module  # what trains on the batches, and is validated
    steps_per_epoch: int
    setup_seconds: float  # one-time work before the first epoch (computing cached features)
    description: str  # for the log: what the module trains on

    def train_batches(self, epoch: int) -> Iterator[Batch]: ...

    def val_batches(self) -> Iterator[Batch]: ...


def make_source(model: TransferNet, run: PhaseRun, first_epoch: int) -> Source:
    """Cached features where the frozen part of the phase is a prefix of a pretrained model, images otherwise."""
    split = frozen_split(model, run.phase.trainable, run.phase.top_blocks)
    if split is not None:
        return CachedFeatures(*split, run, first_epoch)
    return AugmentedImages(model, run)
