"""Where training and inference run: the device, its number format and memory layout, batch sizes
without gradients, loader workers, and the CPU allocator's behaviour."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from transfer.core.errors import UserError

CPU_THREADS = torch.get_num_threads()


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of handing it back to the OS after every batch.

    Activations of a CNN are large, short-lived blocks; by default glibc unmaps each on free and the
    next batch faults the pages in again, which on a virtual machine costs more time in the kernel
    than the convolutions take. Blocks above the largest mmap threshold (32 MiB: one activation of a
    batch of 16 at 224 px) would still be mapped and unmapped each time, so mmap is switched off."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): nothing to tune
        return
    M_TRIM_THRESHOLD = -1
    M_TOP_PAD = -2
    M_MMAP_THRESHOLD = -3
    M_MMAP_MAX = -4
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # the largest value glibc accepts ...
    libc.mallopt(M_MMAP_MAX, 0)  # ... and above it no mmap at all
    libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    libc.mallopt(M_TOP_PAD, 256 * 2**20)


keep_freed_memory()


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """The device `name` (params' `key`, named in the error when this machine lacks it) stands for."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{key}: {name} asked for, but no CUDA GPU is available (use auto or cpu)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"{key}: {name} asked for, but this machine has {torch.cuda.device_count()} "
                        f"CUDA GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{key}: mps asked for, but Apple MPS is not available (use auto or cpu)")
    return torch.device(name)


def uses_bf16(device: torch.device) -> bool:
    """bf16 autocast where the GPU computes in bf16 (Ampere and later); fp32 elsewhere, CPUs included."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bf16 inference is the
    faster (`python -m bench.speed inference-dtype` measures it; docs/speed.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to know
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_inference(device: torch.device, setting: str) -> bool:
    """Whether passes without gradients (frozen features, evaluation) run under bf16 autocast:
    `auto` where the device computes bf16 natively, `bfloat16` or `float32` to force either."""
    if setting != "auto" or device.type == "mps":
        return setting == "bfloat16" and device.type != "mps"
    return uses_bf16(device) if device.type == "cuda" else cpu_has_bf16()


def inference_batch(device: torch.device) -> int:
    """Images per forward pass without gradients (frozen features, validation).

    On a CPU, small batches stay in cache and in already-mapped memory, and are the faster per image
    (docs/speed.md)."""
    return 16 if device.type == "cpu" else 128


def memory_format(device: torch.device, train_batch_size: int = 0) -> torch.memory_format:
    """The layout of models and image batches: channels-last where it measured faster.

    On a CPU always (`python -m bench.speed step`). On a CUDA GPU only for training batches of 64 and
    more: cuDNN sets up its channels-last kernels in each new process, and a step of 16 images is
    slower in it (docs/gpus.md)."""
    if device.type == "cuda" and train_batch_size < 64:
        return torch.contiguous_format
    return torch.channels_last


def to_device(x: torch.Tensor, device: torch.device, fmt: torch.memory_format) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


def worker_count(setting, device: torch.device) -> int:
    if setting != "auto":
        return setting
    # On a small CPU the model needs every core and in-memory crops are cheap: load in-process.
    return min(8, CPU_THREADS) if device.type == "cuda" else (0 if CPU_THREADS <= 4 else 2)


def peak_memory_mib() -> float | None:
    """This process's peak resident memory so far (max RSS) in MiB: decoding, model and training."""
    try:
        import resource
    except ImportError:  # Windows: no getrusage
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)
