"""How frozen's linear head compares with the linear probe, trained other ways on the same features.

    D=/data/suite; python -m bench.frozen_heads $D/caltech20 $D/cifar10-tiny $D/clothing-large \
        $D/magtile-imbalanced hymenoptera_data.zip --seeds 0 1 2

For each dataset (a folder or archive, as `data.url` takes it) a scratch project outside the
repository is packed as bench.suite packs it, and the frozen body's outputs are computed once with
the pipeline's own code and frozen's row (its cached views of the training images; centre crops of
val and test). On them a linear head is trained per seed (init and shuffling) in each of these ways,
the epoch kept by val accuracy (then val loss) as train@frozen keeps it, and scored on the split that
reports (test where there is one, else val):

- `row`: frozen's row as train@frozen trains it: the pipeline's own optimiser, schedule, loss, step
  and batches, with the row's settings from params.yaml;
- `standardised`: the same on features standardised per dimension (train views' mean and std);
- `lbfgs`: multinomial logistic regression solved by L-BFGS on the standardised views, its L2
  strength chosen on val from a grid (deterministic: one seed is all it needs).

beside the linear probe of bench.suite (scikit-learn on standardised centre-crop features, C=1).

`--grid lr=0.03,0.1,0.3 weight_decay=0,0.01 epochs=50,100` also trains the `row` and `standardised`
heads at every combination of those values of frozen's row, and prints the settings with the best
mean over the datasets and a leave-one-dataset-out estimate: for each dataset, the setting with the
best mean over the others, scored on it. Choosing a default on the datasets that then report it
flatters it; the held-out scores say what the choice is worth on a dataset it did not see.
A few minutes on a 2-core CPU (seconds per grid setting); nothing is written to the repository."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bench import working_dir
from bench.probe import linear_probe
from bench.suite import run_stage, scratch_project
from bench.suite_tables import leave_one_out
from transfer.training.stopping import kept_epoch

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
GRID_KEYS = {"lr": float, "weight_decay": float, "epochs": int}
GRID_HEADS = ("row", "standardised")


def frozen_features(folder: Path):
    """frozen's settings, model and its phase's source (transfer.training.feature_cache.CachedFeatures: the
    training views and val images through the frozen body, as train@frozen computes them), and the features as tensors:
    train views, val, and the split that reports."""
    from transfer.core import params as params_module
    from transfer.core.devices import bf16_inference, memory_format
    from transfer.core.settings import mode_settings
    from transfer.data.images import StoreImages, store_splits
    from transfer.data.split_files import read_classes, read_split
    from transfer.data.transforms import eval_batches, working_preprocess
    from transfer.models.backbones import build_model
    from transfer.training.phase_run import PhaseRun
    from transfer.training.sources import make_source
    from transfer.training.trainable import frozen_split, set_trainable

    with working_dir(folder):
        settings = mode_settings(params_module.load(), "frozen")
        model, preprocess = build_model(settings.arch, len(read_classes()), pretrained=True)
        set_trainable(model, "head")
        preprocess = working_preprocess(preprocess, settings.image_size)
        data = store_splits(preprocess, settings.memory_budget_mb)
        cpu = torch.device("cpu")
        amp = bf16_inference(cpu, settings.inference_dtype)
        source = make_source(model, PhaseRun(data, settings.phases[0], cpu, memory_format(cpu), False, amp), 1)
        feats = {"train": (source.train_feats.float(), source.train_labels),
                 "val": (source.val_feats.float(), source.val_labels)}
        test = read_split("test")
        if test.paths:
            encoder = frozen_split(model, "head")[0]
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                rows = [encoder(x).float() for x, _ in eval_batches(StoreImages("test", preprocess), test.labels,
                                                                     preprocess, 64)]
            feats["test"] = (torch.cat(rows), torch.tensor(test.labels))
        feats["report"] = feats.get("test", feats["val"])
    return settings, model, source, feats


def standardised(feats: dict) -> dict:
    train = feats["train"][0]
    flat = train.reshape(-1, train.shape[-1])
    mean = flat.mean(0)
    std = flat.std(0) + 1e-6
    return {split: ((x - mean) / std, y) for split, (x, y) in feats.items()}


def scores(head: torch.nn.Module, feats: dict) -> tuple[float, float, float]:
    """(val accuracy, val loss, reporting accuracy)."""
    with torch.no_grad():
        vx, vy = feats["val"]
        rx, ry = feats["report"]
        logits = head(vx)
        return ((logits.argmax(1) == vy).float().mean().item(), torch.nn.functional.cross_entropy(logits, vy).item(),
                (head(rx).argmax(1) == ry).float().mean().item())


def kept(rows: list[tuple[float, float, float]]) -> float:
    """The reporting accuracy of the row train@frozen keeps, by transfer.training.stopping's rule."""
    return rows[kept_epoch([r[0] for r in rows], [r[1] for r in rows]) - 1][2]


def sgd_head(model, source, settings, feats: dict, seed: int, changes: dict | None = None) -> float:
    """frozen's phase as train@frozen runs it, on `feats`: the pipeline's optimiser, schedule, loss, step
    and batches (the source's views in turn, shuffled by seed and epoch), from the head train@frozen's
    `seed` starts from; `changes` replace settings of the phase."""
    from transfer.training.loop import Stepper, train_one_epoch
    from transfer.training.losses import make_criterion
    from transfer.training.optim import make_optimizer, make_scheduler
    from transfer.training.run import new_model

    phase = dataclasses.replace(source.run.phase, seed=seed, **(changes or {}))
    source = copy.copy(source)
    source.run = dataclasses.replace(source.run, phase=phase)
    source.train_feats = feats["train"][0]
    source.val_feats = feats["val"][0]
    seeded = new_model(dataclasses.replace(settings, seed=seed), model.head.out_features)[0]
    model.head.load_state_dict(seeded.head.state_dict())
    optimizer = make_optimizer(model, phase)
    scheduler = make_scheduler(optimizer, phase, phase.epochs, source.steps_per_epoch)
    criterion = make_criterion(phase, source.run.data.train_labels, model.head.out_features, source.run.device)
    stepper = Stepper(model.head, criterion, optimizer, scheduler, source.run.device, amp=False)
    rows = []
    for epoch in range(1, phase.epochs + 1):
        model.head.train()
        train_one_epoch(stepper, source.train_batches(epoch), epoch)
        rows.append(scores(model.head, feats))
    return kept(rows)


def logistic_regression(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> torch.nn.Linear:
    """Multinomial logistic regression with an L2 penalty on the weights, to convergence (L-BFGS)."""
    head = torch.nn.Linear(x.shape[-1], classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    return head


def lbfgs_head(feats: dict) -> float:
    """Logistic regression on every view, for each L2 strength of the grid; the one val keeps."""
    views, labels = feats["train"]
    x = views.reshape(-1, views.shape[-1])
    y = labels.repeat(len(views))
    return kept([scores(logistic_regression(x, y, int(labels.max()) + 1, l2), feats) for l2 in L2_GRID])


def parse_grid(items: list[str]) -> list[dict]:
    """`KEY=V1,V2,...` items -> every combination, as dicts of phase settings; ValueError names a bad item."""
    axes = {}
    for item in items:
        key, _, values = item.partition("=")
        if key not in GRID_KEYS or not values:
            raise ValueError(f"{item}: expected KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}")
        try:
            axes[key] = [GRID_KEYS[key](v) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"{item}: {values} is not a list of {GRID_KEYS[key].__name__}s") from None
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def setting_name(setting: tuple) -> str:
    head, changes = setting
    return " ".join([head, *(f"{k}={v}" for k, v in changes)])


def print_grid(grid: dict, probes: dict, row: tuple) -> None:
    """The best settings by their mean over the datasets, the row's, and the leave-one-dataset-out choice."""
    datasets = list(probes)
    mean = {s: statistics.fmean(found.values()) for s, found in grid.items()}
    shown = sorted(grid, key=lambda s: -mean[s])[:5]
    print(f"\ngrid: {len(grid)} settings; the 5 with the best mean over the datasets, and frozen's row")
    print(f"{'setting':50} " + " ".join(f"{d[:10]:>10}" for d in datasets) + f" {'mean':>7} {'above':>6}")
    for s in shown + ([row] if row in grid and row not in shown else []):
        above = sum(grid[s][d] > probes[d] for d in datasets)
        print(f"{setting_name(s)[:50]:50} " + " ".join(f"{grid[s][d]:10.4f}" for d in datasets)
              + f" {mean[s]:7.4f} {above:>4d}/{len(datasets)}")
    if len(datasets) < 2:
        return
    print("leave one dataset out: the setting best on the other datasets, scored on this one")
    chosen = leave_one_out(grid, datasets)
    for d, s in chosen.items():
        print(f"{d[:22]:22} {setting_name(s)[:50]:50} {grid[s][d]:7.4f}  probe {probes[d]:.4f}")
    held_out = statistics.fmean(grid[s][d] for d, s in chosen.items())
    print(f"{'mean':22} {'':50} {held_out:7.4f}  probe {statistics.fmean(probes.values()):.4f}"
          + (f"  row {mean[row]:.4f}" if row in grid else ""))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frozen_heads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="sets",
                        help="override a param in every scratch project, as bench.suite's --set")
    parser.add_argument("--work", type=Path, help="where the scratch projects go (default: a temporary folder)")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2,...",
                        help=f"also train the {' and '.join(GRID_HEADS)} heads at every combination of these "
                             f"settings of frozen's row ({', '.join(GRID_KEYS)})")
    args = parser.parse_args()
    try:
        grid_changes = parse_grid(args.grid) if args.grid else []
    except ValueError as err:
        parser.error(f"--grid: {err}")
    work = args.work or Path(tempfile.mkdtemp(prefix="frozen-heads-"))
    work.mkdir(parents=True, exist_ok=True)
    heads = ("row", "standardised", "lbfgs")
    print(f"{'dataset':22} {'on':5} {'probe':>7} " + " ".join(f"{h:>13}" for h in heads))
    table = []
    grid = {}
    probes = {}
    for dataset in args.datasets:
        folder = Path(tempfile.mkdtemp(prefix=f"heads-{dataset.stem}-", dir=work))
        params = scratch_project(folder, dataset.resolve(), ["frozen"], args.sets)
        for module in ("download", "split", "pack"):
            run_stage(folder, dataset, module)
        probe, split, _ = linear_probe(folder, params)
        settings, model, source, feats = frozen_features(folder)
        scaled = standardised(feats)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny problems: one thread is fastest
        found = {"row": statistics.fmean(sgd_head(model, source, settings, feats, s) for s in args.seeds),
                 "standardised": statistics.fmean(sgd_head(model, source, settings, scaled, s) for s in args.seeds),
                 "lbfgs": lbfgs_head(scaled)}
        for head, changes in itertools.product(GRID_HEADS, grid_changes):
            on = feats if head == "row" else scaled
            grid.setdefault((head, tuple(changes.items())), {})[dataset.name] = statistics.fmean(
                sgd_head(model, source, settings, on, s, changes) for s in args.seeds)
        probes[dataset.name] = probe
        torch.set_num_threads(threads)
        table.append((probe, found))
        print(f"{dataset.name[:22]:22} {split:5} {probe:7.4f} " + " ".join(f"{found[h]:13.4f}" for h in heads),
              flush=True)
    probe_mean = statistics.fmean(p for p, _ in table)
    print(f"{'mean':22} {'':5} {probe_mean:7.4f} "
          + " ".join(f"{statistics.fmean(f[h] for _, f in table):13.4f}" for h in heads))
    print(f"{'datasets above probe':28} {'':>7} "
          + " ".join(f"{sum(f[h] > p for p, f in table):>10d}/{len(table):<2d}" for h in heads))
    if grid:
        phase = settings.phases[0]
        print_grid(grid, probes, ("row", tuple((k, getattr(phase, k)) for k in grid_changes[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
