"""Early stopping read off runs that went on longer: what another patience would have kept, and when.

    python -m bench.suite <datasets> --modes scratch --set modes.scratch.patience=null --json full.json
    python -m bench.patience full.json --patience 15 25 50 --stop-on val_loss val_acc

bench.suite records each run's epochs (val loss, val accuracy, seconds). A run that stops early
trains the same epochs as a longer one up to the epoch it stops at (every epoch is seeded from the
seed and the epoch; the schedule is the row's), so one run without early stopping holds the answer
for every patience: the epoch it would stop at (transfer.training.stopping's rule: `patience` epochs without a
strictly better `stop_on`), the epoch it would keep (train's rule: the best val accuracy, then the
lowest val loss, up to there) and the seconds spent until then. It prints, per dataset, row and
setting, the kept epoch's val accuracy (as training measured it, in float32: evaluate's bfloat16
score of the same weights can differ by an image), its mean over the seeds, the epochs and seconds.

For rows of one phase (scratch, finetune): early stopping counts the last phase only, and the record
does not say where a phase starts."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

from transfer.training import stopping


def stop_epoch(values: list[float], patience: int | None, stop_on: str) -> int:
    """The epoch (1-based) a run with these per-epoch values stops at, by transfer.training.stopping's own rule; the
    last one when it never does."""
    count = SimpleNamespace(stop_best=None, stale_epochs=0, stopped_epoch=None)
    for epoch, value in enumerate(values, 1):
        if stopping.update(count, {"epoch": epoch, stop_on: value}, patience, stop_on):
            return epoch
    return len(values)


def kept_epoch(val_acc: list[float], val_loss: list[float], last: int) -> int:
    """The epoch train keeps among the first `last`, by transfer.training.stopping's rule."""
    return stopping.kept_epoch(val_acc[:last], val_loss[:last])


def replay(run: dict, patience: int | None, stop_on: str) -> dict:
    stopped = stop_epoch(run[stop_on], patience, stop_on)
    kept = kept_epoch(run["val_acc"], run["val_loss"], stopped)
    return {"stopped": stopped, "kept": kept, "accuracy": run["val_acc"][kept - 1],
            "seconds": sum(run["epoch_seconds"][:stopped])}


def read_runs(path: Path) -> list[tuple[str, str, list[dict]]]:
    """(dataset, row, runs) of a bench.suite --json file; ValueError when it is not one, or when a run
    has no per-epoch record."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        rows = [(dataset, row, summary["runs"]) for dataset, result in found.items()
                for row, summary in result["modes"].items()]
    except (AttributeError, KeyError, TypeError, json.JSONDecodeError):
        raise ValueError(f"{path}: not a bench.suite --json file") from None
    for dataset, row, runs in rows:
        if any("val_loss" not in run for run in runs):
            raise ValueError(f"{path}: {dataset} {row}: no per-epoch record (made before bench.suite kept one)")
    return rows


def parse_patience(text: str) -> int | None:
    if text == "null":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--patience {text}: must be a whole number >= 1 or null")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.patience", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite_json", type=Path, help="python -m bench.suite --json output")
    parser.add_argument("--patience", nargs="+", default=["15", "25", "50", "null"],
                        help="patiences to replay (null: no early stopping)")
    parser.add_argument("--stop-on", nargs="+", default=["val_loss", "val_acc"], choices=["val_loss", "val_acc"])
    args = parser.parse_args(argv)
    try:
        rows = read_runs(args.suite_json)
        patiences = [parse_patience(text) for text in args.patience]
    except (OSError, ValueError) as error:
        print(f"patience: error: {error}", file=sys.stderr)
        return 2
    print(f"{'dataset':24} {'row':20} {'stop_on':8} {'patience':>8} {'accuracy per seed':>24} {'mean':>7} "
          f"{'stopped':>12} {'kept':>12} {'seconds':>8}")
    means: dict[tuple, list[float]] = {}
    for dataset, row, runs in rows:
        for stop_on in args.stop_on:
            for patience in patiences:
                if patience is None and stop_on != args.stop_on[0]:
                    continue  # without early stopping, what it would watch does not matter
                replays = [replay(run, patience, stop_on) for run in runs]
                mean = statistics.fmean(r["accuracy"] for r in replays)
                means.setdefault((row, stop_on if patience else "-", patience), []).append(mean)
                per_seed = " / ".join(f"{r['accuracy']:.3f}" for r in replays)
                print(f"{dataset[:24]:24} {row[:20]:20} {stop_on if patience else '-':8} {str(patience):>8} "
                      f"{per_seed:>24} {mean:7.4f} "
                      f"{'/'.join(str(r['stopped']) for r in replays):>12} "
                      f"{'/'.join(str(r['kept']) for r in replays):>12} "
                      f"{statistics.fmean(r['seconds'] for r in replays):8.0f}")
    print(f"\n{'over the datasets':24} {'row':20} {'stop_on':8} {'patience':>8} {'mean':>7}")
    for (row, stop_on, patience), values in means.items():
        print(f"{'':24} {row[:20]:20} {stop_on:8} {str(patience):>8} {statistics.fmean(values):7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
