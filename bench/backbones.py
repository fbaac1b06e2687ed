"""Backbones side by side: parameters, inference and training-step time per image at batch 16.

    python bench/backbones.py efficientnet_lite0 resnet18 timm/mobilenetv3_large_100 timm/convnext_atto

Each backbone is built as the pipeline builds it (transfer.models.backbones.build_model, 2 classes) at random
init, so that it runs offline (the time of a network does not depend on its weights), at its own
input size unless --image-size is given. Inference: eval mode, BatchNorm folded as evaluate and
predict run it. Train step: forward, backward and an SGD step of the whole network. Each figure is
the median of --repeats timed batches after one untimed one, on the CPU (--device cuda for a GPU)."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transfer.core.devices  # noqa: E402,F401  - its allocator settings, as in a train stage
from transfer.models.backbones import build_model, count_params  # noqa: E402
from transfer.models.folding import fold_batchnorm  # noqa: E402

BATCH = 16


def median_ms_per_image(step, device: torch.device, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000 / BATCH


def measure(arch: str, image_size: int | None, device: torch.device, repeats: int) -> dict:
    model, preprocess = build_model(arch, 2, pretrained=False)
    size = image_size or preprocess["image_size"]
    model.to(device)
    x = torch.randn(BATCH, 3, size, size, device=device)
    y = torch.randint(0, 2, (BATCH,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_ms = median_ms_per_image(train_step, device, repeats)
    model.eval()
    fold_batchnorm(model, size)

    def infer():
        with torch.inference_mode():
            model(x)

    return {"arch": arch, "params": count_params(model)[1], "size": size,
            "infer_ms": median_ms_per_image(infer, device, repeats), "train_ms": train_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="+", help="model.arch values: torchvision names, efficientnet_lite0, "
                                                 "timm/<name>")
    parser.add_argument("--image-size", type=int, default=None, help="px (default: each backbone's own)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}, {device}, batch {BATCH}, random init")
    print(f"{'arch':32} {'params':>12} {'px':>4} {'inference ms/img':>17} {'train step ms/img':>18}")
    for arch in args.archs:
        row = measure(arch, args.image_size, device, args.repeats)
        print(f"{row['arch']:32} {row['params']:12,} {row['size']:4} {row['infer_ms']:17.1f} {row['train_ms']:18.1f}",
              flush=True)


if __name__ == "__main__":
    main()
