"""bfloat16 against float32 for the passes without gradients: speed of inference, and the accuracy of
the modes whose frozen part's outputs are computed in that pass.

Run from the project root after `dvc repro pack` (minutes on a 2-core CPU):

    python bench/inference_dtype.py                      # frozen, partial, freeze_unfreeze; seed 0
    python bench/inference_dtype.py --modes frozen --seeds 0 1 2

Prints, per dtype, ms an image of EfficientNet-Lite0 inference (batch 16, 224 px, BatchNorm folded,
channels-last), then per mode and seed the best val accuracy and the seconds of the frozen part's pass."""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transfer.core import params as params_module  # noqa: E402
from transfer.core.devices import cpu_has_bf16  # noqa: E402
from transfer.data.loaders import read_classes, store_splits  # noqa: E402
from transfer.models.backbones import build_model  # noqa: E402
from transfer.models.folding import fold_batchnorm  # noqa: E402
from transfer.training.loop import ResumeState  # noqa: E402
from transfer.training.runs import run_training  # noqa: E402

DTYPES = ("float32", "bfloat16")


def inference_ms(bf16: bool, repeats: int = 8) -> float:
    model, _ = build_model("efficientnet_lite0", 2, pretrained=True)
    model.eval()
    fold_batchnorm(model, 224)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)
        started = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - started) / repeats / len(x) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["frozen", "partial", "freeze_unfreeze"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bf16: {cpu_has_bf16()}", flush=True)
    for dtype in DTYPES:
        print(f"inference {dtype:9s} {inference_ms(dtype == 'bfloat16'):6.2f} ms/image", flush=True)
    params = params_module.load(ROOT / "params.yaml")
    classes = read_classes()
    data = {}  # read once per working size: the dtype and seed change the run, not the images
    budget = params["train"]["memory_budget_mb"]

    def images(pre):
        if pre["resize_size"] not in data:
            data[pre["resize_size"]] = store_splits(pre, budget)
        return data[pre["resize_size"]]
    for mode in args.modes:
        for seed in args.seeds:
            for dtype in DTYPES:
                params["modes"][mode].update(seed=seed, inference_dtype=dtype)
                settings = params_module.mode_settings(params_module.check(params), mode)
                with tempfile.TemporaryDirectory() as tmp:
                    _, _, result = run_training(settings, len(classes), ResumeState(Path(tmp) / "state.pt", "bench"),
                                                images)
                frozen_pass = result.train_seconds - sum(row["seconds"] for row in result.history)
                print(f"{mode:16s} seed {seed} {dtype:9s} best val accuracy {result.best_accuracy:.4f} "
                      f"(epoch {result.best_epoch}), train {result.train_seconds:6.1f} s, "
                      f"of which the frozen part's pass {frozen_pass:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
