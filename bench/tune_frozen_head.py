"""How the frozen mode's defaults were chosen: a sweep of head settings on cached features.

Run by hand from the project root after `dvc repro pack` (a few minutes on a 2-core CPU):

    python bench/tune_frozen_head.py [--seeds 8] [--top 15]

The frozen body's outputs for 8 augmented views of every training image (the pipeline's own
seeded cached_features, the shared train.augment) and for the val images are computed once; then
for every combination of views, epochs, lr, optimiser, label smoothing and weight decay a linear
head is trained once per seed (head init and shuffling), exactly as the frozen phase trains it
(cosine schedule per step, batch 32, the view of epoch e is e mod views). It prints the settings
with the best mean of the best-epoch val accuracy over the seeds, and the worst seed's."""
from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transfer.core import params as params_module  # noqa: E402
from transfer.core.devices import memory_format  # noqa: E402
from transfer.data.loaders import read_classes, store_splits  # noqa: E402
from transfer.models.backbones import build_model, frozen_split  # noqa: E402
from transfer.training.sources import PhaseRun, cached_features  # noqa: E402

GRID = {"views": [2, 4, 8], "epochs": [10, 25, 50], "lr": [0.003, 0.01, 0.03, 0.1], "optimizer": ["sgd", "adamw"],
        "label_smoothing": [0.0, 0.1], "weight_decay": [1e-4, 1e-2]}


def train_head(feats, labels, val_feats, val_labels, cfg, seed, batch=32) -> float:
    torch.manual_seed(seed)
    head = torch.nn.Linear(feats.shape[-1], int(labels.max()) + 1)
    lr = cfg["lr"] / 10 if cfg["optimizer"] == "adamw" else cfg["lr"]  # adamw wants ~10x less
    if cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=cfg["weight_decay"])
    else:
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=cfg["weight_decay"])
    total = cfg["epochs"] * math.ceil(len(labels) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    best = 0.0
    for epoch in range(cfg["epochs"]):
        x = feats[epoch % cfg["views"]]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = loss_fn(head(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            best = max(best, (head(val_feats).argmax(1) == val_labels).float().mean().item())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    params = params_module.load()
    settings = params_module.mode_settings(params, "frozen")
    model, pre = build_model(settings["arch"], len(read_classes()), pretrained=True)
    data = store_splits(pre, settings["memory_budget_mb"])
    encoder, _ = frozen_split(model, "head")
    cpu = torch.device("cpu")  # features in float32, as the sweep behind the frozen defaults had them
    run = PhaseRun(data, settings["phases"][0], cpu, memory_format(cpu), False, False)
    feats, val_feats = cached_features(encoder, run, max(GRID["views"]))
    labels, val_labels = torch.tensor(data.train_labels), torch.tensor(data.val_labels)
    torch.set_num_threads(1)  # tiny problems: one thread is fastest
    rows = []
    for values in itertools.product(*GRID.values()):
        cfg = dict(zip(GRID, values))
        accs = [train_head(feats, labels, val_feats, val_labels, cfg, seed) for seed in range(args.seeds)]
        rows.append((statistics.mean(accs), min(accs), cfg))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
    print(f"{len(rows)} settings x {args.seeds} seeds; best val accuracy: mean, worst seed, settings")
    for mean, worst, cfg in rows[:args.top]:
        print(f"{mean:.4f}  {worst:.4f}  {cfg}")


if __name__ == "__main__":
    main()
