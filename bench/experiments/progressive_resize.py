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
from transfer.core import params as params_module  # noqa: E402
from transfer.core.devices import worker_count  # noqa: E402
from transfer.core.paths import PARAMS_FILE  # noqa: E402
from transfer.data.loaders import read_classes, train_transform  # noqa: E402
from transfer.training import loop as training  # noqa: E402
from transfer.training import sources  # noqa: E402
from transfer.training.runs import run_training  # noqa: E402

START = int(os.environ.get("START", "128"))


def size_at(epoch: int, epochs: int, full: int) -> int:
    t = (epoch - 1) / max(1, epochs - 1)
    return int(round((START + t * (full - START)) / 32) * 32)


class ProgressiveImages(sources.AugmentedImages):
    """Augmented images whose training crops grow with the epoch: a source, plugged into the loop."""

    def train_batches(self, epoch):
        phase, pre = self.run.phase, self.run.data.preprocess
        size = size_at(epoch, phase["epochs"], pre["image_size"])
        self.loader.dataset.transform = train_transform(pre, {**phase["augment"], "crop_size": size})
        return super().train_batches(epoch)


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    params = params_module.load(ROOT / PARAMS_FILE)
    params["modes"]["finetune"]["seed"] = seed
    settings = params_module.mode_settings(params, "finetune")
    settings["device"] = "cpu"
    if worker_count(settings["workers"], torch.device("cpu")):  # workers would keep the transform they started with
        sys.exit("progressive_resize: needs in-process loading: set train.workers to 0 in params.yaml")
    training.make_source = lambda model, run, first_epoch: ProgressiveImages(model, run)  # finetune: images only
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, result = run_training(settings, len(read_classes()), training.ResumeState(Path(tmp) / "state.pt", "p"))
    print(f"START={START} seed {seed}: best val accuracy {result.best_accuracy:.4f} at epoch {result.best_epoch}, "
          f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
