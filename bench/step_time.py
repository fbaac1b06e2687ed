"""What one training step of finetune costs, in ms an image, for each speed-up the pipeline uses.

Run by hand from the project root (a minute on a 2-core CPU; nothing else should be running):

    python bench/step_time.py
    python bench/step_time.py --batch 32 --steps 6

Each row adds one thing to the row above, on the same random batch and a pretrained
EfficientNet-Lite0 with BatchNorm on its ImageNet statistics (finetune's keep_bn_stats): the default
memory layout, channels-last, BatchNorm folded into the convolutions (transfer.models.folding.fold_batchnorm),
then 160 px training crops (finetune's augment.crop_size) instead of 224 px. Then the same for
inference (validation), which runs at 224 px."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import transfer.core.devices  # noqa: E402,F401  - its allocator settings, as in a train stage
from transfer.models.backbones import build_model, train_mode  # noqa: E402
from transfer.models.folding import fold_batchnorm  # noqa: E402


def per_image_ms(step, batch: int, steps: int) -> float:
    for _ in range(2):  # oneDNN builds its kernels for a shape on first use
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / (steps * batch) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}")
    rows = [("default layout", torch.contiguous_format, False, 224),
            ("channels-last", torch.channels_last, False, 224),
            ("+ BatchNorm folded", torch.channels_last, True, 224),
            ("+ 160 px crops", torch.channels_last, True, 160)]
    for name, fmt, fold, size in rows:
        train, infer = measure(fmt, fold, size, args.batch, args.steps)
        print(f"{name:<22} train step {train:6.1f} ms/image   inference at 224 px {infer:5.1f} ms/image", flush=True)


def measure(fmt: torch.memory_format, fold: bool, size: int, batch: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model, _ = build_model("efficientnet_lite0", 2, pretrained=True)
    model = model.to(memory_format=fmt)
    if fold:
        fold_batchnorm(model, 224)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_mode(model, keep_bn_stats=True)
    train = per_image_ms(train_step, batch, steps)
    model.eval()
    x224 = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    with torch.inference_mode():
        infer = per_image_ms(lambda: model(x224), batch, steps)
    return train, infer


if __name__ == "__main__":
    main()
