"""What one phase of a run trains with (PhaseRun: the data, the phase's settings, where it computes),
how an epoch is cut into batches, and the seed each epoch draws everything random from."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from transfer.core.settings import Phase
from transfer.data.images import TrainData
from transfer.training.distributed import OneProcess

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run: everything random in that epoch derives from it alone."""
    return seed * 1_000_003 + epoch


def drops_last(size: int, batch_size: int) -> bool:
    return size % batch_size == 1  # BatchNorm cannot train on a batch of one


def steps(size: int, batch_size: int) -> int:
    return size // batch_size if drops_last(size, batch_size) else math.ceil(size / batch_size)


@dataclass(frozen=True)
class PhaseRun:
    """What every source of a phase needs: the data, the phase's settings, and where it computes."""
    data: TrainData
    phase: Phase
    device: torch.device
    fmt: torch.memory_format  # the layout of image batches
    amp: bool  # bf16 autocast while training
    inference_amp: bool  # bf16 autocast in passes without gradients (the frozen part's outputs)
    strategy: OneProcess = field(default_factory=OneProcess)  # one process, or one of several (distributed)
