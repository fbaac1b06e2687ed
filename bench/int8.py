"""Float against int8 ONNX of an ImageNet EfficientNet-Lite0 (offline weights), as export makes them:
file sizes and batch-1 latency in interleaved pairs on this CPU, one thread.

    python -m bench.int8 [--arch efficientnet_lite0] [--classes 2] [--runs 200] [--calibration 64]

The head is new (random, `--classes` outputs), as after transfer; the body is the pretrained one.
Calibration uses generated images (no dataset needed): sizes and speed do not depend on them."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from transfer.data.transforms import working_preprocess
from transfer.evaluation.stats import format_p, mcnemar_exact
from transfer.models.backbones import build_model
from transfer.models.cost import THREADS, latency_summary, machine, onnx_runner, paired_latency
from transfer.models.folding import fold_batchnorm
from transfer.models.onnx_model import export
from transfer.models.quantization import quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200, help="paired timed runs at batch 1")
    parser.add_argument("--calibration", type=int, default=64, help="calibration images")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, preprocess = build_model(args.arch, args.classes, pretrained=True)
    preprocess = working_preprocess(preprocess, None)
    model.eval()
    fold_batchnorm(model, preprocess["image_size"])
    meta = {"arch": args.arch, "mode": "frozen", "classes": [str(i) for i in range(args.classes)],
            "class_names": [str(i) for i in range(args.classes)], "preprocess": preprocess}
    size = preprocess["image_size"]
    images = np.random.default_rng(0).standard_normal((args.calibration, 3, size, size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        float_path = root / "model.onnx"
        int8_path = root / "model.int8.onnx"
        export(model, meta, float_path)
        quantize(float_path, int8_path, (images[i:i + 16] for i in range(0, len(images), 16)), root)
        float_seconds, int8_seconds = paired_latency(onnx_runner(float_path), onnx_runner(int8_path), images[:1],
                                                     runs=args.runs)
        float_mb = float_path.stat().st_size / 1e6
        int8_mb = int8_path.stat().st_size / 1e6
    fast = latency_summary(float_seconds)
    slow = latency_summary(int8_seconds)
    faster = sum(i < f for f, i in zip(float_seconds, int8_seconds))
    host = machine()
    print(f"{args.arch} at {size} px on {host['cpu']} ({host['cpu_cores']} cores), {THREADS} thread, "
          f"{args.runs} paired runs at batch 1")
    print(f"float: {float_mb:.2f} MB, median {fast['median_ms']:.2f} ms, p95 {fast['p95_ms']:.2f} ms")
    print(f"int8:  {int8_mb:.2f} MB, median {slow['median_ms']:.2f} ms, p95 {slow['p95_ms']:.2f} ms")
    print(f"int8 is {float_mb / int8_mb:.2f}x smaller and {fast['median_ms'] / slow['median_ms']:.2f}x faster "
          f"(medians); faster in {faster} of {args.runs} pairs (sign test "
          f"{format_p(mcnemar_exact(faster, args.runs - faster))})")


if __name__ == "__main__":
    main()
