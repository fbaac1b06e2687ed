"""Training as several processes (train.nproc > 1): torchrun starts them, DistributedDataParallel
averages their gradients, and this module is all the training loop sees of it.

The train stage re-runs itself under torchrun (`launch`): one process per CUDA GPU (NCCL), or
several on the CPU (gloo). Every process builds the same seeded model and reads the same data;
each global batch (train.batch_size images, as with one process) is dealt out to the processes
(transfer.training.sharding), each computes the gradient of its share, and the weighted average DDP makes of
them is that of the whole batch. Where BatchNorm statistics are frozen, the weights therefore equal
those of one process to float rounding. Training BatchNorm layers are SyncBatchNorm on GPUs (their
statistics over the whole batch); on the CPU each process normalises over its own share.

`OneProcess` is the strategy of a plain run; `Processes` that of one process among several."""
from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn

from transfer.core.devices import pick_device
from transfer.core.errors import UserError
from transfer.core.settings import Phase
from transfer.core.stage import log

LAUNCHED = "LOCAL_RANK"  # set by torchrun in each process it starts


def own_totals(*sums: float) -> tuple[float, ...]:
    """One process: its sums are the totals."""
    return sums


class OneProcess:
    """A run in one process: nothing to share, split or gather."""
    world_size = 1
    rank = 0
    is_main = True
    weight = 1.0  # this process's share of the current global batch, relative to an equal share

    def __init__(self, device: torch.device | None = None):
        self.device = device

    def share(self, count: int) -> range:
        """The items (of `count`) this process computes, where work is split: a contiguous block."""
        return range(count)

    def gather(self, part: torch.Tensor, count: int) -> torch.Tensor:
        """Every process's block of `count` items, in item order (see `share`)."""
        return part

    totals = staticmethod(own_totals)  # sums (loss, correct, count) over every process

    def wrap(self, module: nn.Module, phase: Phase) -> nn.Module:
        """The module the training steps run through."""
        return module

    def criterion(self, criterion):
        return criterion


class Processes(OneProcess):
    """One of the torchrun processes of a run (rank 0 writes every file)."""

    def __init__(self, device: torch.device, rank: int, world_size: int):
        super().__init__(device)
        self.rank = rank
        self.world_size = world_size
        self.is_main = rank == 0

    def share(self, count: int) -> range:
        size = -(-count // self.world_size)
        return range(min(count, self.rank * size), min(count, (self.rank + 1) * size))

    def gather(self, part: torch.Tensor, count: int) -> torch.Tensor:
        import torch.distributed as dist

        size = -(-count // self.world_size)
        padded = part.new_zeros((size, *part.shape[1:]))
        padded[:len(part)] = part
        blocks = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(blocks, padded.contiguous())
        return torch.cat(blocks)[:count]

    def totals(self, *sums: float) -> tuple[float, ...]:
        import torch.distributed as dist

        values = torch.tensor(sums, dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return tuple(values.tolist())

    def wrap(self, module: nn.Module, phase: Phase) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda" and not phase.keep_bn_stats:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # in place below the top module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def criterion(self, criterion):
        def weighted(logits, y):
            # The value stays this share's mean (what the logs sum up); its gradient is weighted by
            # the share's size, so that DDP's plain average over processes is the whole batch's mean.
            loss = criterion(logits, y)
            weighted = loss * self.weight
            return weighted + (loss - weighted).detach()
        return weighted


def check_nproc(nproc: int, device_name: str) -> None:
    """One line where train.nproc cannot run here (params.yaml's checks already require >= 1)."""
    if nproc == 1:
        return
    device = pick_device(device_name)
    if device.type == "mps":
        raise UserError(f"train.nproc: {nproc} processes need CUDA GPUs or the CPU, not Apple MPS "
                        f"(set train.device: cpu, or train.nproc: 1)")
    if device.type == "cuda" and device_name.startswith("cuda:"):
        raise UserError(f"train.device: {device_name} names one GPU, but train.nproc {nproc} runs a process on "
                        f"each of {nproc}; use cuda or auto (and CUDA_VISIBLE_DEVICES to choose them)")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(f"train.nproc: {nproc} processes asked for, but this machine has "
                        f"{torch.cuda.device_count()} CUDA GPU(s): one process per GPU; use at most "
                        f"{torch.cuda.device_count()}")


def launch(module: str, args: list[str], nproc: int) -> None:
    """Run `python -m module args` as `nproc` processes under torchrun, in this process (the
    torchrun agent), and exit with their status. Only rank 0's output reaches the console."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # The CPU's cores, shared out (torchrun would set 1 thread per process otherwise).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    name = module.rsplit(".", 1)[-1]
    log(f"{name}: {nproc} processes under torchrun")
    try:
        run(get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--local-ranks-filter=0",
                                          "-m", module, *args]))
    except SignalException:  # Ctrl-C or SIGTERM: the processes were stopped; rank 0 said what it kept
        sys.exit(130)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        if rank != 0 or code not in (2, 130):  # else rank 0 printed its own line
            print(f"{name}: error: training process {rank} of {nproc} failed (exit status {code})", file=sys.stderr)
        sys.exit(code)


def start(device_name: str) -> OneProcess:
    """This process's strategy: `OneProcess` on the device train.device names, or, in a process
    torchrun started, its rank's, with the process group joined (gloo on the CPU, NCCL on CUDA)."""
    if LAUNCHED not in os.environ:  # under torchrun even one process runs as one of several (DDP)
        return OneProcess(pick_device(device_name))
    import torch.distributed as dist

    die_with_parent()
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                            device_id=device if device.type == "cuda" else None)
    return Processes(device, rank, world)


def stop(strategy: OneProcess) -> None:
    if isinstance(strategy, Processes):
        import torch.distributed as dist

        dist.destroy_process_group()


def die_with_parent() -> None:
    """Linux: end this process when torchrun's agent ends, even by kill -9, so that no orphaned
    process trains on (and none writes: only rank 0 does, and it ends too)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
