"""GPU only: what each memory layout and precision costs an EfficientNet-Lite0 training step.

Run by hand on a CUDA machine from the project root (no data needed: random images):

    python -m bench.gpu                      # batches of 16 and 64
    python -m bench.gpu --batches 32

Each configuration runs in a fresh process, because what it measures first is a per-process cost:
the first training step, in which cuDNN picks and sets up its kernels for that layout and precision.
Then the steady step (mean of 20 after 4), and a forward pass of 128 images without gradients (the
pipeline's validation batch), first and steady. transfer.core.devices.memory_format follows these numbers."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench import ROOT

CONFIGS = [("fp32", "NCHW"), ("fp32", "CL"), ("bf16", "NCHW"), ("bf16", "CL")]


def measure(precision: str, layout: str, batch: int) -> dict:
    import torch

    from transfer.models.backbones import build_model
    from transfer.training.trainable import set_trainable, train_mode

    fmt = torch.channels_last if layout == "CL" else torch.contiguous_format
    amp = precision == "bf16"
    torch.zeros(1, device="cuda")
    model, _ = build_model("efficientnet_lite0", 2, True)
    model.cuda().to(memory_format=fmt)
    set_trainable(model, "all")
    train_mode(model, True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,), device="cuda")
    x_eval = torch.randn(128, 3, 224, 224, device="cuda").contiguous(memory_format=fmt)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def forward():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            model(x_eval)

    def seconds(fn, repeat=1):
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / repeat

    first = seconds(step)
    seconds(step, 4)
    steady = seconds(step, 20)
    model.eval()
    first_eval = seconds(forward)
    steady_eval = seconds(forward, 5)
    return {"first step s": first, "step ms": steady * 1e3, "first eval s": first_eval, "eval ms": steady_eval * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        precision, layout, batch = args.child
        print(json.dumps(measure(precision, layout, int(batch))))
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu: no CUDA GPU here")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'batch':>5} {'precision':>9} {'layout':>6} {'first step s':>12} {'step ms':>8} {'img/s':>7} "
          f"{'first eval s':>12} {'eval ms':>8}")
    for batch in args.batches:
        for precision, layout in CONFIGS:
            out = subprocess.run([sys.executable, "-m", "bench.gpu", "--child", precision, layout, str(batch)],
                                 cwd=ROOT, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{batch:>5} {precision:>9} {layout:>6} {r['first step s']:>12.2f} {r['step ms']:>8.1f} "
                  f"{batch / r['step ms'] * 1e3:>7.0f} {r['first eval s']:>12.2f} {r['eval ms']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
