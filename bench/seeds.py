"""How steady a mode's result is: train one mode on the real split once per seed, print each best val
accuracy and their mean and worst.

Run by hand from the project root after `dvc repro pack` (minutes per seed on a 2-core CPU):

    python bench/seeds.py finetune --seeds 0 1 2
    python bench/seeds.py finetune --seeds 0 1 2 --set warmup_epochs=1 lr=0.02

`--set key=value` overrides a key of the mode's row for this run only (values are read as YAML), so
a candidate default can be compared with the committed one over several seeds before it is
committed: with 153 val images one seed's result moves by a few images."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transfer.core import params as params_module  # noqa: E402
from transfer.core.paths import PARAMS_FILE  # noqa: E402
from transfer.data.loaders import read_classes, store_splits  # noqa: E402
from transfer.training.loop import ResumeState  # noqa: E402
from transfer.training.runs import run_training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    params = params_module.load(ROOT / PARAMS_FILE)
    row = params["modes"][args.mode]
    for item in args.set:
        key, _, value = item.partition("=")
        row[key] = yaml.safe_load(value)
    classes = read_classes()
    data = {}  # read once: the seed changes the training, not the images
    budget = params["train"]["memory_budget_mb"]

    def images(pre):
        if "images" not in data:
            data["images"] = store_splits(pre, budget)
        return data["images"]
    accuracies = []
    for seed in args.seeds:
        row["seed"] = seed
        params_module.check(params)
        settings = params_module.mode_settings(params, args.mode)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            _, _, result = run_training(settings, len(classes), ResumeState(Path(tmp) / "state.pt", "seeds"), images)
        accuracies.append(result.best_accuracy)
        print(f"{args.mode} seed {seed}: best val accuracy {result.best_accuracy:.4f} at epoch {result.best_epoch} "
              f"({time.perf_counter() - started:.0f} s) {' '.join(args.set)}", flush=True)
    print(f"{args.mode} {' '.join(args.set) or '(committed row)'}: mean {statistics.mean(accuracies):.4f}, "
          f"worst {min(accuracies):.4f} over seeds {args.seeds}", flush=True)


if __name__ == "__main__":
    main()
