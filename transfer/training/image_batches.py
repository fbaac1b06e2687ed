"""The image source: the whole network (or the part that is not a cacheable prefix) trains on augmented
image batches from one loader per phase, shuffled and seeded by (seed, epoch) alone."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from transfer.core.devices import inference_batch, to_device, worker_count
from transfer.core.settings import Phase
from transfer.data.images import TensorImages, TrainData
from transfer.data.transforms import crop_stack, eval_batches, normalized_batches, train_transform
from transfer.models.backbones import TransferNet
from transfer.training.phase_run import Batch, PhaseRun, drops_last, epoch_seed, steps


class EpochSampler(torch.utils.data.Sampler):
    """The keys of one epoch for TensorImages: a shuffled order and a seed per image, both drawn from
    (run seed, epoch) alone. Call set_epoch before each pass; one loader, its worker processes kept
    alive, then serves every epoch of a phase, and any epoch is the same in a resumed run."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        this_epoch = epoch_seed(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(this_epoch)).tolist()
        return iter([(i, epoch_seed(this_epoch, i) % 2**63) for i in order])


class AugmentedImages:
    def __init__(self, model: TransferNet, run: PhaseRun):
        self.module = model
        self.run = run
        data = run.data
        phase = run.phase
        # Held in memory, the val images are cropped once; on a GPU the stack stays there, so validation
        # moves no images per epoch. Read from the store, they are cropped a batch at a time.
        in_memory = isinstance(data.val_images, list)
        self.val_stack = crop_stack(data.val_images, data.preprocess).to(run.device) if in_memory else None
        self.val_labels = torch.tensor(data.val_labels)
        self.loader = image_loader(data, phase, run.device)
        self.steps_per_epoch = steps(len(data.train_labels), phase.batch_size)
        self.setup_seconds = 0.0
        self.description = f"on {len(data.train_labels)} augmented train images"

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        self.loader.sampler.set_epoch(epoch)
        for x, y in self.loader:
            yield to_device(x, self.run.device, self.run.fmt), y.to(self.run.device, non_blocking=True)

    def val_batches(self) -> Iterator[Batch]:
        run = self.run
        size = inference_batch(self.run.device)
        if self.val_stack is not None:
            batches = normalized_batches(self.val_stack, self.val_labels, run.data.preprocess, size)
        else:
            batches = eval_batches(run.data.val_images, run.data.val_labels, run.data.preprocess, size)
        for x, y in batches:
            yield to_device(x, run.device, run.fmt), y.to(run.device)


def image_loader(data: TrainData, phase: Phase, device: torch.device) -> torch.utils.data.DataLoader:
    """One loader for every epoch of a phase: its workers start once, not once per epoch."""
    dataset = TensorImages(data.train_images, data.train_labels, train_transform(data.preprocess, phase.augment))
    workers = worker_count(phase.workers, device)
    # The loader's own generator: drawing its worker seeds must not move the global random
    # stream (dropout), or a resumed run would differ from an uninterrupted one.
    return torch.utils.data.DataLoader(
        dataset, batch_size=phase.batch_size, sampler=EpochSampler(len(dataset), phase.seed),
        drop_last=drops_last(len(dataset), phase.batch_size), num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(phase.seed))
