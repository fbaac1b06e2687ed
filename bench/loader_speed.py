"""The training loader alone: images per second out of the decoded-once images, with a fresh loader
per epoch against one whose workers persist, for several worker counts.

Run by hand from the project root after `dvc repro split` (it decodes data/raw itself):

    python bench/loader_speed.py                     # finetune's augmentations, batch 16
    python bench/loader_speed.py --mode scratch --workers 0 2 4 8

On a GPU machine it also copies each batch to the GPU from pinned memory, as training does. Compare
its images per second with a training step's (bench/gpu_layouts.py) to see whether the CPU-side
augmentation can hold the GPU back."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="finetune")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    import torch

    from transfer.core import params as params_module
    from transfer.core.paths import PARAMS_FILE
    from transfer.data.loaders import (
        TensorImages,
        decode_all,
        read_classes,
        read_split,
        train_transform,
        working_preprocess,
    )
    from transfer.models.backbones import build_model
    from transfer.training.sources import EpochSampler

    settings = params_module.mode_settings(params_module.load(ROOT / PARAMS_FILE), args.mode)
    _, pre = build_model(settings["arch"], len(read_classes()), False)
    pre = working_preprocess(pre, settings["image_size"])
    split = read_split("train")
    images = decode_all(split.paths, pre)
    dataset = TensorImages(images, split.labels, train_transform(pre, settings["augment"]))
    cuda = torch.cuda.is_available()
    print(f"# {args.mode}: {len(images)} images at {pre['image_size']} px, batch {settings['batch_size']}, "
          f"{'copied to ' + torch.cuda.get_device_name() if cuda else 'CPU only'}")
    print(f"{'workers':>7} {'loader':>11} {'epoch s (each)':>30} {'img/s after epoch 1':>20}")
    for workers in args.workers:
        for persistent in (False, True) if workers else (False,):
            loader = None
            times = []
            for epoch in range(1, args.epochs + 1):
                started = time.perf_counter()
                if loader is None or not persistent:  # a fresh loader each epoch, or one for all
                    loader = torch.utils.data.DataLoader(
                        dataset, batch_size=settings["batch_size"], sampler=EpochSampler(len(dataset), 0),
                        num_workers=workers, pin_memory=cuda, persistent_workers=persistent)
                loader.sampler.set_epoch(epoch)
                for x, _ in loader:
                    if cuda:
                        x.to("cuda", non_blocking=True)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            rate = len(images) * (len(times) - 1) / sum(times[1:])
            print(f"{workers:>7} {'persistent' if persistent else 'per epoch':>11} "
                  f"{' '.join(f'{t:.3f}' for t in times):>30} {rate:>20.0f}", flush=True)


if __name__ == "__main__":
    main()
