"""The validation suite: every mode on several datasets and seeds, against a linear probe.

    python -m bench.suite /data/flowers.zip /data/cifar10-prefix /data/pets --seeds 0 1 2
    python -m bench.suite /data/gestures --modes frozen finetune --set modes.frozen.lr=0.03 --json out.json

Each dataset is what `data.url` accepts (a folder or an archive). For each one the script makes a
scratch project in a temporary folder outside the repository (or under --work): the pipeline's
stages/, transfer/ and params.yaml, with data.url set to the dataset and the --set overrides applied (dotted
keys, values read as YAML). It runs the stages download, split and pack there once, then train@<mode>
and evaluate@<mode> for every mode and seed (train.seed), each as its own process, as `dvc repro`
would. It prints per dataset and mode the accuracy's mean and spread over the seeds (sample standard
deviation, min-max) on the split that reports (test where the dataset has one, else val), the mean
train and wall seconds, and the linear probe: scikit-learn's LogisticRegression on standardised
centre-crop features of the frozen ImageNet backbone (model.arch at train.image_size), fitted on
train and scored on that same split, then each mode's mean over the datasets. --variant runs every mode
again with other settings in the same project, as row mode+NAME. Choosing the row with the best mean
over the datasets flatters it (the same datasets chose it and report it), so where a mode has
variants and there are several datasets a last block estimates what the choice is worth on a dataset
it did not see: for each dataset, the row with the best mean over the others, scored on it
(leave one dataset out). --peer adds fastai's fine_tune on the same backbone, split and images as rows peer@N,
paired with every mode image by image (bench.peer), as the probe is. --resume EARLIER.json goes on from an earlier
run: a dataset it holds keeps its project and runs, and only the runs it lacks run. Nothing is written to the
repository."""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import ROOT, copy_code, peer, probe
from bench.suite_tables import table
from transfer.core.paths import PARAMS_FILE, live_tsv, mode_metrics, predictions_csv


class SuiteError(Exception):
    """A bad dataset path, setting or failed stage: one line, exit 2."""


def set_key(params: dict, assignment: str) -> None:
    """`a.b.c=value` (value read as YAML) into params, creating mappings on the way."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise SuiteError(f"--set {assignment}: expected KEY=VALUE, e.g. train.epochs=3")
    *parents, last = key.split(".")
    node = params
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise SuiteError(f"--set {assignment}: {name} is not a section")
    node[last] = yaml.safe_load(value)


def suite_params(dataset: Path, modes: list[str], sets: list[str]) -> dict:
    """The repository's params set for `dataset`: only `modes`, data.url the dataset, --set applied."""
    params = yaml.safe_load((ROOT / PARAMS_FILE).read_text(encoding="utf-8"))
    params["data"]["url"] = params["data"]["watch"] = str(dataset)  # a local url is watched (params check)
    for assignment in sets:  # first: a --set may add a row (modes.frozen_lite2={...}) that --modes names
        set_key(params, assignment)
    unknown = [mode for mode in modes if mode not in params["modes"]]
    if unknown:
        raise SuiteError(f"--modes: unknown mode {unknown[0]} (known: {', '.join(params['modes'])})")
    params["modes"] = {mode: params["modes"][mode] for mode in modes}
    params["mode"] = modes[0]
    return params


def scratch_project(folder: Path, dataset: Path, modes: list[str], sets: list[str]) -> dict:
    """The pipeline's code (stages/, transfer/) and params in `folder`, set for `dataset`; the params it wrote."""
    copy_code(ROOT, folder)
    params = suite_params(dataset, modes, sets)
    write_params(folder, params)
    return params


def write_params(folder: Path, params: dict) -> None:
    (folder / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def run_stage(folder: Path, dataset: Path, module: str, *args: str) -> float:
    """Run one stage in the scratch project; its wall seconds. A failure names the dataset and the
    stage's own last line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=folder, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise SuiteError(f"{dataset}: stage {module} {' '.join(args)} failed: {last}")
    return time.perf_counter() - started


def run_dataset(dataset: Path, modes: list[str], seeds: list[int], sets: list[str], work: Path,
                variants: list[tuple[str, list[str]]] = (("", []),), saved=lambda found: None,
                peer_rows: dict[str, int] | None = None, peer_batch: int = peer.BATCH_SIZE,
                earlier: dict | None = None) -> dict:
    """{"probe", "modes": {row: {"runs": [per seed], "mean", ...}}}, a row per mode and variant
    (`mode` or `mode+variant`): a variant's settings apply on top of --set, in the same project (one
    pack, one probe). `saved(found)` after every run, so that a long suite keeps what it measured. Each run's
    right/wrong per image ("correct"), the probe's ("probe_correct") and each run against the probe
    ("probe_paired"); with peer_rows ({row: epochs}), the peer's rows and pairs (bench.peer). `earlier`: this
    dataset's record of an earlier run (--resume): its project and every run it holds are kept, only the rest runs."""
    if earlier:
        folder = Path(earlier["project"])
        params = resumed_project(folder, dataset, modes, sets)
        found = copy.deepcopy(earlier)
    else:
        folder = Path(tempfile.mkdtemp(prefix=f"suite-{dataset.stem}-", dir=work))
        params = scratch_project(folder, dataset, modes, sets)
        for module in ("download", "split", "pack"):
            run_stage(folder, dataset, module)
        found = {"project": str(folder), "modes": {}}
    if "probe_correct" not in found:
        found["probe"], found["evaluated_on"], found["probe_correct"] = probe.linear_probe(folder, params)
    found["probe_paired"] = probe.pairs(found)
    saved(found)
    for name, assignments in variants:
        varied = copy.deepcopy(params)
        for assignment in assignments:
            set_key(varied, assignment)
        for mode in modes:
            row = f"{mode}+{name}" if name else mode
            runs = found["modes"].get(row, {}).get("runs", [])
            for seed in seeds:
                if any(run["seed"] == seed for run in runs):
                    continue
                varied["train"]["seed"] = seed
                varied["modes"][mode].pop("seed", None)  # the suite's seed, not a row's own
                write_params(folder, varied)
                wall = run_stage(folder, dataset, "train", mode) + run_stage(folder, dataset, "evaluate", mode)
                metrics = json.loads((folder / mode_metrics(mode)).read_text(encoding="utf-8"))
                runs.append({"seed": seed, "accuracy": metrics["accuracy"], "train_seconds": metrics["train_seconds"],
                             "wall_seconds": round(wall, 1), "stopped_epoch": metrics.get("stopped_epoch"),
                             "best_epoch": metrics["best_epoch"], **epoch_history(folder, mode),
                             "correct": peer.mode_correct(folder / predictions_csv(mode), folder)})
                found["modes"][row] = summarize(runs)
                found["probe_paired"] = probe.pairs(found)
                saved(found)
    write_params(folder, params)  # the run's own settings, not its last variant's: what a resume checks
    peer.add_rows(found, folder, peer_rows or {}, seeds, peer_batch, summarize, saved)
    return found


def resumed_project(folder: Path, dataset: Path, modes: list[str], sets: list[str]) -> dict:
    """The params of an earlier run's scratch project, after checking that they are the ones this run would write
    (the seeds aside): runs kept from it and runs added to it must differ only in what the suite varies."""
    if not (folder / PARAMS_FILE).is_file():
        raise SuiteError(f"--resume: {dataset.name}: its project {folder} is gone; run the dataset afresh")
    kept = yaml.safe_load((folder / PARAMS_FILE).read_text(encoding="utf-8"))
    unseeded = [copy.deepcopy(kept), suite_params(dataset, modes, sets)]
    for p in unseeded:
        p["train"].pop("seed", None)
        p["mode"] = None
        p["modes"] = {mode: p["modes"][mode] for mode in modes if mode in p["modes"]}
        for row in p["modes"].values():
            row.pop("seed", None)
    if unseeded[0] != unseeded[1]:
        key = first_difference(*unseeded)
        raise SuiteError(f"--resume: {dataset.name}: {key} in {folder / PARAMS_FILE} is not what this run sets; "
                         "the same --modes and --set as the earlier run, or run the dataset afresh")
    return kept


def first_difference(a, b, key: str = "") -> str:
    """The dotted key where two params trees first differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in [*a, *(k for k in b if k not in a)]:
            if a.get(name) != b.get(name):
                return first_difference(a.get(name), b.get(name), f"{key}.{name}" if key else name)
    return key


def epoch_history(folder: Path, mode: str) -> dict:
    """{"val_loss": [...], "val_acc": [...], "epoch_seconds": [...]}: the run's epochs (dvclive/<mode>/),
    from which another patience's stopping epoch, kept epoch and time can be read off a longer run."""
    series = {}
    for key, metric in (("val_loss", "val/loss"), ("val_acc", "val/acc"), ("epoch_seconds", "epoch_seconds")):
        lines = (folder / live_tsv(mode, metric)).read_text(encoding="utf-8").splitlines()[1:]
        series[key] = [round(float(line.split("\t")[1]), 6) for line in lines]
    return series


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME KEY=VALUE ...`: the settings of a named variant of every mode (not data.* or pack.*,
    which the variants share)."""
    name, *assignments = text.split()
    if not assignments or "=" in name:
        raise SuiteError(f"--variant {text!r}: expected NAME KEY=VALUE ..., e.g. 'mild modes.frozen.epochs=30'")
    for assignment in assignments:
        if assignment.split(".")[0] in ("data", "pack"):
            raise SuiteError(f"--variant {name}: {assignment}: data.* and pack.* go in --set (one pack per dataset)")
    return name, assignments


def summarize(runs: list[dict]) -> dict:
    accuracies = [run["accuracy"] for run in runs]
    return {"runs": runs, "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min": min(accuracies), "max": max(accuracies),
            "train_seconds": statistics.fmean(run["train_seconds"] for run in runs),
            "wall_seconds": statistics.fmean(run["wall_seconds"] for run in runs)}


def read_results(path: Path) -> dict:
    """An earlier run's --json; SuiteError unless it is one."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SuiteError(f"--resume {path}: {getattr(err, 'strerror', None) or err}") from None
    if not isinstance(results, dict) or not all(isinstance(r, dict) and "project" in r and "modes" in r
                                                for r in results.values()):
        raise SuiteError(f"--resume {path}: not a bench.suite --json file")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path, help="folders or archives, as data.url takes them")
    parser.add_argument("--modes", nargs="+", help="default: every mode of params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="sets",
                        help="override a param in every scratch project, e.g. modes.scratch.patience=10")
    parser.add_argument("--variant", action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                        help="also run every mode with these settings, as row mode+NAME (repeatable)")
    parser.add_argument("--work", type=Path, help="where the scratch projects go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--resume", type=Path, metavar="JSON", help="an earlier run's --json: a dataset it holds "
                        "keeps its project and runs, and only the runs (mode, seed, peer row, probe) it lacks run")
    peer.add_arguments(parser)
    args = parser.parse_args(argv)
    modes = args.modes or list(yaml.safe_load((ROOT / PARAMS_FILE).read_text(encoding="utf-8"))["modes"])
    try:
        peer_rows = peer.wanted(args, set_key)
        for dataset in args.datasets:
            if not dataset.exists():
                raise SuiteError(f"{dataset}: no such folder or archive")
        variants = [("", []), *map(parse_variant, args.variant)]
        work = args.work or Path(tempfile.mkdtemp(prefix="suite-"))
        work.mkdir(parents=True, exist_ok=True)
        if work.resolve().is_relative_to(ROOT):
            raise SuiteError(f"--work {work}: inside the repository; the scratch projects go outside it")
        results = read_results(args.resume) if args.resume else {}
        def saved(found: dict, name: str) -> None:
            results[name] = found
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

        for dataset in args.datasets:
            run_dataset(dataset.resolve(), modes, args.seeds, args.sets, work, variants,
                        lambda found, name=dataset.name: saved(found, name), peer_rows, args.peer_batch_size,
                        results.get(dataset.name))
            print(f"# {dataset.name}: done ({results[dataset.name]['project']})", file=sys.stderr, flush=True)
    except (SuiteError, peer.PeerError, probe.ProbeError) as err:
        print(f"suite: error: {err}", file=sys.stderr)
        return 2
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
