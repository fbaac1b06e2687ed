"""The cached-features source: the frozen prefix of a pretrained model (the body under a head, or the
lower blocks under `partial`'s top) runs once over `views` augmented views of every training image and
over the val images; the rest of the network trains on those outputs, not on images. The outputs are
kept in memory within train.memory_budget_mb, else spill to an unnamed file (FeatureSink)."""
from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from transfer.core.devices import inference_batch, to_device
from transfer.core.files import check_no_links
from transfer.core.paths import RESUME_DIR
from transfer.data.images import Images, TensorImages
from transfer.data.transforms import eval_batches, train_transform
from transfer.training.phase_run import Batch, PhaseRun, drops_last, epoch_seed, steps


class CachedFeatures:
    def __init__(self, encoder: nn.Module, rest: nn.Module, run: PhaseRun, first_epoch: int):
        started = time.perf_counter()
        self.module = rest
        self.run = run
        self.first_epoch = first_epoch
        phase = run.phase
        views = phase.cached_views if phase.augment.is_random() else 1  # without randomness, one view is all
        self.train_feats, self.val_feats = cached_features(encoder, run, views, phase.memory_budget_mb)
        self.train_labels = torch.tensor(run.data.train_labels).to(run.device)
        self.val_labels = torch.tensor(run.data.val_labels).to(run.device)
        self.batch_size = phase.batch_size
        self.steps_per_epoch = steps(len(self.train_labels), self.batch_size)
        self.setup_seconds = time.perf_counter() - started
        self.description = (f"on cached features: {len(self.train_labels)} train images x {views} views and "
                            f"{len(self.val_labels)} val images through the frozen part once "
                            f"({self.setup_seconds:.1f} s)")

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """The epoch's view of every image (views taken in turn), shuffled by (seed, epoch)."""
        feats = self.train_feats[(epoch - self.first_epoch) % len(self.train_feats)]
        generator = torch.Generator().manual_seed(epoch_seed(self.run.phase.seed, epoch))
        order = torch.randperm(len(feats), generator=generator)
        if drops_last(len(order), self.batch_size):
            order = order[:len(order) - 1]
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield feats[idx].float(), self.train_labels[idx]

    def val_batches(self) -> Iterator[Batch]:
        size = inference_batch(self.run.device)
        for i in range(0, len(self.val_feats), size):
            yield self.val_feats[i:i + size].float(), self.val_labels[i:i + size]


class DiskRows:
    """Rows of bfloat16 features in a file: rows[i:j] and rows[index_tensor] read just those rows, so
    memory holds a batch of them, never the whole cache."""

    def __init__(self, file, first: int, count: int, row_shape: tuple[int, ...]):
        self.file = file
        self.first = first
        self.count = count
        self.row_shape = tuple(row_shape)
        self.row_bytes = math.prod(self.row_shape) * 2
        self.shape = (count, *self.row_shape)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.count)
            return self._read(start, max(0, stop - start))
        rows = [self._read(int(i), 1) for i in key]
        return torch.cat(rows) if rows else torch.empty(0, *self.row_shape, dtype=torch.bfloat16)

    def _read(self, start: int, count: int) -> torch.Tensor:
        data = os.pread(self.file.fileno(), self.row_bytes * count, (self.first + start) * self.row_bytes)
        return torch.frombuffer(bytearray(data), dtype=torch.bfloat16).view(count, *self.row_shape)


class FeatureSink:
    """Where the frozen part's outputs go, batch by batch, chosen by the first batch's size: float32 in
    memory within the budget, else bfloat16 (half), else bfloat16 in an unnamed file under
    RESUME_DIR (gone when the process ends, even when killed). Never more than one batch in float32."""

    def __init__(self, rows: int, budget_mb: float):
        self.rows = rows
        self.budget = budget_mb * 2**20
        self.filled = 0
        self.memory: torch.Tensor | None = None
        self.file = None

    def add(self, feats: torch.Tensor) -> None:
        feats = feats.cpu()
        if self.memory is None and self.file is None:
            self._allocate(feats.shape[1:])
        if self.file is not None:
            self.file.write(feats.to(torch.bfloat16).contiguous().view(torch.uint8).numpy().tobytes())
        else:
            self.memory[self.filled:self.filled + len(feats)] = feats
        self.filled += len(feats)

    def _allocate(self, row_shape: torch.Size) -> None:
        size = self.rows * math.prod(row_shape)
        if size * 2 <= self.budget:  # float32 where that fits too
            dtype = torch.float32 if size * 4 <= self.budget else torch.bfloat16
            self.memory = torch.empty(self.rows, *row_shape, dtype=dtype)
        else:
            check_no_links(RESUME_DIR).mkdir(parents=True, exist_ok=True)
            self.file = tempfile.TemporaryFile(dir=RESUME_DIR)
            self.row_shape = tuple(row_shape)

    def rows_of(self, first: int, count: int):
        if self.file is not None:
            self.file.flush()
            return DiskRows(self.file, first, count, self.row_shape)
        return self.memory[first:first + count]


@torch.inference_mode()
def cached_features(encoder: nn.Module, run: PhaseRun, views: int, budget_mb: float = math.inf):
    """Frozen-encoder outputs for `views` augmented views of every training image (one set of rows per
    view) and for every val image: the frozen part's work done once, not once per epoch. View v of
    image j draws from (seed, v, j) alone, so that processes computing a share each (run.strategy)
    make the views one process makes. Kept as FeatureSink decides by `budget_mb`: tensors in memory
    ([views, N, ...] and [N_val, ...]) or DiskRows."""
    encoder.eval()
    data = run.data
    device = run.device
    strategy = run.strategy
    batch = inference_batch(device)
    transform = train_transform(data.preprocess, run.phase.augment)
    views_of = TensorImages(data.train_images, data.train_labels, transform)  # a key (index, seed): one view
    count = len(data.train_images)
    sink = FeatureSink(views * count + len(data.val_images), budget_mb)

    def encode(xs):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.inference_amp):
            return encoder(to_device(xs, device, run.fmt)).float()

    def add(batches, total: int) -> None:
        """This process's share of a pass into the sink: batch by batch in one process; gathered from
        every process first where there are several."""
        if strategy.world_size == 1:
            for xs in batches:
                sink.add(encode(xs))
        else:
            sink.add(strategy.gather(torch.cat([encode(xs) for xs in batches]), total))

    mine = strategy.share(count)
    for view in range(views):
        view_seed = epoch_seed(run.phase.seed, -1 - view)  # epochs count from 1: seeds apart from theirs
        add((torch.stack([views_of[(j, epoch_seed(view_seed, j) % 2**63)][0]
                          for j in range(i, min(i + batch, mine.stop))]) for i in range(mine.start, mine.stop, batch)),
            count)
    mine = strategy.share(len(data.val_images))
    add((x for x, _ in eval_batches(ImageRange(data.val_images, mine), data.val_labels[mine.start:mine.stop],
                                    data.preprocess, batch)), len(data.val_images))
    val = sink.rows_of(views * count, len(data.val_images))
    if sink.file is not None:
        return [sink.rows_of(v * count, count) for v in range(views)], val
    return sink.rows_of(0, views * count).view(views, count, *sink.memory.shape[1:]), val


class ImageRange(Sequence):
    """images[start:stop] of a list or of images read on access, without reading any."""

    def __init__(self, images: Images, span: range):
        self.images = images
        self.span = span

    def __len__(self) -> int:
        return len(self.span)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[self.span[i]]


