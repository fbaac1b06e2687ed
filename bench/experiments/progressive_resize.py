"""Experiment: progressive resizing for finetune on a CPU (cheaper early epochs at a smaller crop).

    OMP_NUM_THREADS=1 START=128 python bench/experiments/progressive_resize.py 0    # seed 0

Trains the finetune row with its training crop growing from START px in the first epoch to the full
224 px in the last (rounded to multiples of 32); validation stays at 224 px. On the 2-core AMD EPYC
(2026-11-23, seeds 0 and 1, before augmentation was seeded per image): best val accuracy 0.941 and
0.948, against 0.961 and 0.948 at 224 px throughout; each epoch cost about 0.64 of a full one. It
lost accuracy on seed 0 and was not kept. finetune now trains on fixed 160 px crops instead
(augment.crop_size), which held its accuracy over seeds 0-2; this script's growing crop replaces
that setting."""
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from stages import params as params_module  # noqa: E402
from stages.backbones import build_model  # noqa: E402
from stages.datasets import decode_all, read_classes, read_split, train_transform, working_preprocess  # noqa: E402
from stages.paths import PARAMS_FILE  # noqa: E402
from stages.training import Fit, TrainData, pick_device, worker_count  # noqa: E402

START = int(os.environ.get("START", "128"))


def size_at(epoch: int, epochs: int, full: int) -> int:
    t = (epoch - 1) / max(1, epochs - 1)
    return int(round((START + t * (full - START)) / 32) * 32)


class ProgressiveFit(Fit):
    def train_on_images(self, stepper, loader, epoch):
        size = size_at(epoch, self.s["epochs"], self.data.preprocess["image_size"])
        loader.dataset.transform = train_transform(self.data.preprocess, {**self.s["augment"], "crop_size": size})
        return super().train_on_images(stepper, loader, epoch)


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    params = params_module.load(ROOT / PARAMS_FILE)
    params["modes"]["finetune"]["seed"] = seed
    settings = params_module.mode_settings(params, "finetune")
    classes, train, val = read_classes(), read_split("train"), read_split("val")
    torch.manual_seed(seed)
    model, pre = build_model(settings["arch"], len(classes), True)
    pre = working_preprocess(pre, settings["image_size"])
    data = TrainData(decode_all(train.paths, pre), train.labels, decode_all(val.paths, pre), val.labels, pre)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fit = ProgressiveFit(model, data, settings, pick_device("cpu"), Path(tmp) / "state.pt", "progressive")
        if worker_count(fit.s["workers"], fit.device):  # workers would keep the transform they started with
            sys.exit("progressive_resize: needs in-process loading: set train.workers to 0 in params.yaml")
        result = fit.run()
    print(f"START={START} seed {seed}: best val accuracy {result.best_accuracy:.4f} at epoch {result.best_epoch}, "
          f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
