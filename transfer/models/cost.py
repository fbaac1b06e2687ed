"""What running a published model costs on the machine at hand: its file size, its latency at batch 1
and its throughput at a batch of 32, each timed after a warm-up, and the machine named (CPU model,
threads) so that a reader knows which machine the numbers are of.

Timings vary from run to run (other processes, frequency scaling): they go to a report, and any
decision taken on them (int8's "measurably faster", transfer.evaluation.deployment) rests on runs of the
two models interleaved and paired, never on two separate series."""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from transfer.core.devices import memory_format, to_device

THREADS = 1  # intra-op threads of every timing: one core's figure varies least with what else the machine runs
LATENCY_RUNS = 50  # timed runs at batch 1, after WARMUP_RUNS untimed ones
WARMUP_RUNS = 5
THROUGHPUT_BATCH = 32
THROUGHPUT_RUNS = 5

Runner = Callable[[np.ndarray], object]  # one forward pass of a float32 NCHW batch


def onnx_runner(path: Path, threads: int = THREADS) -> Runner:
    """A forward pass of the ONNX file at `path` through onnxruntime on `threads` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its graph optimiser's notes on unused constants are no news
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def torch_runner(model: torch.nn.Module, threads: int = THREADS) -> Runner:
    """A forward pass of the PyTorch model on the CPU on `threads` threads: torch's thread count for
    the rest of the process (switching it at every call would be timed too)."""
    model = model.eval()
    torch.set_num_threads(threads)

    def run(x: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(x))
    return run


def seconds(run: Runner, x: np.ndarray) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


def latency(run: Runner, image: np.ndarray, runs: int = LATENCY_RUNS) -> list[float]:
    """Seconds of `runs` passes of one image (batch 1), after WARMUP_RUNS untimed ones."""
    for _ in range(WARMUP_RUNS):
        run(image)
    return [seconds(run, image) for _ in range(runs)]


def paired_latency(run_a: Runner, run_b: Runner, image: np.ndarray, runs: int = LATENCY_RUNS):
    """Seconds of `runs` passes of one image through A and through B, interleaved (A B, then B A, in
    turn), so that a slow moment of the machine falls on both of a pair: ([a...], [b...])."""
    for _ in range(WARMUP_RUNS):
        run_a(image)
        run_b(image)
    times_a = []
    times_b = []
    for index in range(runs):
        if index % 2:
            times_b.append(seconds(run_b, image))
            times_a.append(seconds(run_a, image))
        else:
            times_a.append(seconds(run_a, image))
            times_b.append(seconds(run_b, image))
    return times_a, times_b


def throughput(run: Runner, batch: np.ndarray, runs: int = THROUGHPUT_RUNS) -> float:
    """Images a second of passes of `batch`: its size over the median of `runs` timed passes after one untimed."""
    run(batch)
    return len(batch) / float(np.median([seconds(run, batch) for _ in range(runs)]))


def latency_summary(times: list[float]) -> dict:
    """Median and 95th percentile in milliseconds, with how many runs and threads they are of."""
    ms = np.asarray(times) * 1000
    return {"median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "runs": len(times), "threads": THREADS}


def file_cost(name: Path, path: Path, run: Runner, image: np.ndarray, batch: np.ndarray,
              times: list[float] | None = None) -> dict:
    """The file published as `name` (its bytes at `path`): its size, its latency at batch 1 (`times`
    where already measured) and its throughput."""
    times = latency(run, image) if times is None else times
    return {"file": name.as_posix(), "megabytes": round(path.stat().st_size / 1e6, 3),
            "latency_batch_1": latency_summary(times),
            f"images_per_second_batch_{len(batch)}": round(throughput(run, batch), 1)}


def device_runner(model: torch.nn.Module, device: torch.device, bf16: bool = False) -> Runner:
    """A forward pass of the PyTorch model on `device` (under bf16 autocast when `bf16`), in the layout
    evaluation uses; on a GPU it waits for the result, so that a timing holds the whole pass."""
    fmt = memory_format(device)
    model = model.eval().to(memory_format=fmt)

    def run(x: np.ndarray):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(to_device(torch.from_numpy(x), device, fmt))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out
    return run


def model_cost(model: torch.nn.Module, image_size: int, device: torch.device, batch: int,
               bf16: bool = False, runs: int = LATENCY_RUNS) -> dict:
    """What one image costs the model on `device`: milliseconds at batch 1 (median of `runs` passes after
    WARMUP_RUNS untimed ones) and per image at a batch of `batch` (the median pass over its size). On a
    CPU on THREADS threads in float32 (as a deployed model runs), torch's thread count restored after;
    on a GPU in the dtype evaluation uses (`bf16`)."""
    on_cpu = device.type == "cpu"
    threads = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(THREADS)
    try:
        run = device_runner(model, device, bf16 and not on_cpu)
        image = np.random.default_rng(0).random((1, 3, image_size, image_size), dtype=np.float32)
        times = latency(run, image, runs)
        per_second = throughput(run, np.repeat(image, batch, axis=0))
    finally:
        torch.set_num_threads(threads)
    return {"latency_batch_1": {**latency_summary(times), "threads": THREADS if on_cpu else None},
            "batch": batch, "ms_per_image_at_batch": round(1000 / per_second, 3), "image_size": image_size,
            "device": str(device), "dtype": "bfloat16" if bf16 and not on_cpu else "float32"}


def machine() -> dict:
    """The CPU the timings ran on (its model name from /proc/cpuinfo where there is one), its logical
    cores and the threads each timing used."""
    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"cpu": name or platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "threads": THREADS, "system": platform.system()}
