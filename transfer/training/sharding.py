"""A phase's source as one process of several sees it: its share of every global batch.

The global batches are those one process would train on (the same EpochSampler order and per-image
seeds, the same cached-feature views); process r of P takes images r, r+P, r+2P, ... of each, and
tells the strategy its share's size, which weights its gradient (transfer.training.distributed). Val batches
are dealt out the same way; the loop sums loss and accuracy over the processes (strategy.totals).
A last global batch smaller than P is dropped, as one process drops a last batch of one image."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from transfer.core.devices import to_device
from transfer.training.distributed import OneProcess
from transfer.training.image_batches import AugmentedImages, EpochSampler
from transfer.training.phase_run import Batch, drops_last
from transfer.training.sources import Source


def shard(source: Source, strategy: OneProcess) -> Source:
    if strategy.world_size == 1:
        return source
    return ShardedImages(source, strategy) if isinstance(source, AugmentedImages) else ShardedBatches(source, strategy)


def kept(size: int, batch_size: int, world: int) -> list[int]:
    """The sizes of the global batches of an epoch of `size` items that every process trains on."""
    sizes = [min(batch_size, size - i) for i in range(0, size, batch_size)]
    if sizes and (drops_last(size, batch_size) or sizes[-1] < world):
        sizes.pop()
    return sizes


class ShardedBatches:
    """Any source's global batches, each cut into the processes' shares (cached features: every
    process holds them all, so cutting costs nothing)."""

    def __init__(self, inner: Source, strategy: OneProcess):
        self.inner = inner
        self.strategy = strategy
        self.module = inner.module
        self.setup_seconds = inner.setup_seconds
        labels = getattr(inner, "train_labels", None)  # cached features: one global batch may drop out
        self.steps_per_epoch = (len(kept(len(labels), inner.batch_size, strategy.world_size)) if labels is not None
                                else inner.steps_per_epoch)
        self.description = f"{inner.description}; {strategy.world_size} processes"

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        world = self.strategy.world_size
        rank = self.strategy.rank
        for x, y in self.inner.train_batches(epoch):
            if len(y) < world:
                continue
            self.strategy.weight = len(y[rank::world]) * world / len(y)
            yield x[rank::world], y[rank::world]

    def val_batches(self) -> Iterator[Batch]:
        world = self.strategy.world_size
        rank = self.strategy.rank
        for x, y in self.inner.val_batches():
            if len(y[rank::world]):
                yield x[rank::world], y[rank::world]


class ShareOfBatches(torch.utils.data.Sampler):
    """The keys (index, seed) of this process's share of each global batch of an EpochSampler."""

    def __init__(self, sampler: EpochSampler, batch_size: int, strategy: OneProcess):
        self.sampler = sampler
        self.batch_size = batch_size
        self.strategy = strategy

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def sizes(self) -> list[int]:
        return kept(len(self.sampler), self.batch_size, self.strategy.world_size)

    def __len__(self) -> int:
        return len(self.sizes())

    def __iter__(self):
        keys = list(self.sampler)
        world = self.strategy.world_size
        rank = self.strategy.rank
        return iter([keys[i * self.batch_size:][:size][rank::world] for i, size in enumerate(self.sizes())])


class ShardedImages(ShardedBatches):
    """Augmented images: the loader itself makes only this process's share of each batch."""

    def __init__(self, inner: AugmentedImages, strategy: OneProcess):
        super().__init__(inner, strategy)
        loader = inner.loader
        self.batches = ShareOfBatches(loader.sampler, loader.batch_size, strategy)
        self.loader = torch.utils.data.DataLoader(
            loader.dataset, batch_sampler=self.batches, num_workers=loader.num_workers,
            pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers, generator=loader.generator)
        self.steps_per_epoch = len(self.batches)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        self.batches.set_epoch(epoch)
        world = self.strategy.world_size
        device = self.inner.run.device
        fmt = self.inner.run.fmt
        for (x, y), size in zip(self.loader, self.batches.sizes()):
            self.strategy.weight = len(y) * world / size
            yield to_device(x, device, fmt), y.to(device, non_blocking=True)
