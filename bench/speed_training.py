"""The subcommands of bench.speed that train: `tutorial` (the plain tutorial loop against the pipeline's
training) and `inference-dtype` (bfloat16 against float32 for the passes without gradients). Run them
as `python -m bench.speed tutorial|inference-dtype ...`; each function's docstring is its --help.

The library is imported inside the functions: the tutorial loop's process must not load the
pipeline's settings (transfer.core.devices tunes the allocator when imported)."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import ROOT

# frozen and scratch: the tutorials' 25 epochs; finetune: 3, its cost per epoch (25 take 10 minutes
# in the tutorial loop on a 2-core CPU).
DEFAULT_EPOCHS = {"frozen": 25, "finetune": 3, "scratch": 25}
DTYPES = ("float32", "bfloat16")


def tutorial_loop(mode: str, epochs: int) -> dict:
    """The PyTorch transfer-learning tutorial's train_model, as written there, on our split."""
    import torch
    from torch import nn

    from transfer.core import params as params_module
    from transfer.data.split_files import read_classes
    from transfer.models.backbones import build_model

    params = params_module.load()
    pretrained = params["modes"][mode]["pretrained"]
    torch.manual_seed(0)
    classes = read_classes()
    model, pre = build_model(params["model"]["arch"], len(classes), pretrained)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the tutorial's choice
    model.to(device)
    loaders = tutorial_loaders(pre)
    if mode == "frozen":
        for p in model.body.parameters():
            p.requires_grad = False
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    best = 0.0
    started = time.perf_counter()
    epoch_seconds = []
    for _ in range(epochs):
        epoch_started = time.perf_counter()
        for phase in ("train", "val"):
            correct = tutorial_phase(model, loaders[phase], phase == "train", criterion, optimizer, device)
            if phase == "train":
                scheduler.step()
            else:
                best = max(best, correct / len(loaders["val"].dataset))
        epoch_seconds.append(time.perf_counter() - epoch_started)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": epochs * len(loaders["train"].dataset), "best_val_accuracy": best,
            "epoch_seconds": epoch_seconds, "setup": f"{pre['image_size']} px, batch 4, fp32"}


def tutorial_loaders(pre: dict) -> dict:
    """The tutorial's data: its transforms, every image file decoded again for every sample, batch 4."""
    import torch
    from torchvision import transforms

    from transfer.core.paths import RAW_DIR
    from transfer.data.decode import open_rgb
    from transfer.data.split_files import read_split

    norm = transforms.Normalize(pre["mean"], pre["std"])
    tf = {"train": transforms.Compose([transforms.RandomResizedCrop(pre["image_size"]),
                                       transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]),
          "val": transforms.Compose([transforms.Resize(pre["resize_size"]), transforms.CenterCrop(pre["image_size"]),
                                     transforms.ToTensor(), norm])}

    class Files(torch.utils.data.Dataset):
        def __init__(self, split):
            self.split = split
            self.rows = read_split(split)

        def __len__(self):
            return len(self.rows.paths)

        def __getitem__(self, i):
            return tf[self.split](open_rgb(RAW_DIR / self.rows.paths[i])), self.rows.labels[i]

    # The tutorial's 4 loader workers where there is a GPU; on a small CPU they would only take cores
    # from the model, so the images load in-process there.
    workers = 4 if torch.cuda.is_available() else 0
    return {s: torch.utils.data.DataLoader(Files(s), batch_size=4, shuffle=True, num_workers=workers)
            for s in ("train", "val")}


def tutorial_phase(model, loader, training: bool, criterion, optimizer, device) -> int:
    """One pass of the tutorial's phase loop (the whole network forward, BatchNorm in train mode while
    training); the number of correct predictions."""
    import torch

    model.train(training)
    correct = 0
    for x, y in loader:
        x = x.to(device)
        y = y.to(device)
        with torch.set_grad_enabled(training):
            out = model(x)
            loss = criterion(out, y)
            if training:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        correct += (out.argmax(1) == y).sum().item()
    return correct


def pipeline(mode: str, epochs: int) -> dict:
    """The train stage's work for one mode (decode once, cached features, ...), epochs overridden."""
    from transfer.core import params as params_module
    from transfer.core.devices import bf16_inference, pick_device, uses_bf16
    from transfer.core.settings import mode_settings
    from transfer.data.images import store_splits
    from transfer.data.split_files import read_classes
    from transfer.training.loop import ResumeState
    from transfer.training.run import run_training

    params = params_module.load()
    settings = mode_settings(params, mode)
    last = dataclasses.replace(settings.phases[-1], epochs=epochs - sum(p.epochs for p in settings.phases[:-1]))
    settings = dataclasses.replace(settings, phases=(*settings.phases[:-1], last))
    started = []

    def decoded(preprocess):  # from here on, as in the tutorial loop: decoding is part of the work
        started.append(time.perf_counter())
        return store_splits(preprocess, settings.memory_budget_mb)

    with tempfile.TemporaryDirectory() as tmp:
        _, data, result = run_training(settings, len(read_classes()), ResumeState(Path(tmp) / "state.pt", "bench"),
                                       decoded)
    seconds = time.perf_counter() - started[0]
    device = pick_device(settings.device)
    precision = f"{'bf16' if uses_bf16(device) else 'fp32'}"
    if bf16_inference(device, settings.inference_dtype) and not uses_bf16(device):
        precision += ", frozen pass bf16"
    return {"seconds": seconds, "images": epochs * len(data.train_labels), "best_val_accuracy": result.best_accuracy,
            "epoch_seconds": [row["seconds"] for row in result.history],
            "setup": f"{size_text(settings.augment.crop_size, data.preprocess['image_size'])}, "
                     f"batch {settings.batch_size}, {precision}"}


def size_text(crop: int | None, size: int) -> str:
    return f"{crop} px crops, val {size}" if crop and crop != size else f"{size} px"


def run_child(variant: str, mode: str, epochs: int) -> dict:
    """Run one variant in a fresh process; its peak memory is the child's max RSS."""
    cmd = [sys.executable, "-m", "bench.speed", "tutorial", "--child", variant, "--modes", mode, "--epochs",
           str(epochs)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read()
    if status != 0:
        sys.exit(f"speed tutorial: {variant} {mode} failed (exit status {status})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mib"] = usage.ru_maxrss / 1024
    return result


def tutorial(args) -> None:
    """The plain tutorial loop against the pipeline's training, same data, machine and backbone.

    Run by hand from the project root after `dvc repro pack` (never in CI):

        python -m bench.speed tutorial                 # frozen, finetune, scratch; 25 / 3 / 25 epochs
        python -m bench.speed tutorial --quick         # a short run of each (smoke test)
        python -m bench.speed tutorial --modes frozen --epochs 25

    For each mode, (a) the tutorial loop (batch 4, SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1), every JPEG
    decoded every epoch, the whole network run forward every epoch, BatchNorm left in train mode) and
    (b) the pipeline's training of that mode (its row in params.yaml, with the epochs set to the same
    number) each run in a fresh process; the report gives wall seconds, training images per second,
    peak memory (max RSS), best val accuracy and the ratio (a)/(b).
    """
    os.chdir(ROOT)
    if args.child:
        run = tutorial_loop if args.child == "tutorial" else pipeline
        print(json.dumps(run(args.modes, args.epochs)))
        return

    import torch

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}")
    # img/s counts every second of the run; epoch 1 s and later img/s split off the first epoch, which
    # on a GPU also pays the one-time start of CUDA and its libraries in a fresh process.
    header = (f"{'mode':<16}{'epochs':>7}{'variant':>10}{'wall s':>9}{'img/s':>9}{'epoch 1 s':>10}"
              f"{'later img/s':>12}{'peak MiB':>10}{'best acc':>10}  setup")
    print(header)
    for mode in args.modes.split(","):
        epochs = 2 if args.quick else args.epochs or DEFAULT_EPOCHS.get(mode, 5)
        results = {}
        for variant in ("tutorial", "pipeline"):
            r = results[variant] = run_child(variant, mode, epochs)
            later = r["epoch_seconds"][1:]
            later_rate = f"{r['images'] / epochs * len(later) / sum(later):.1f}" if later else "-"
            print(f"{mode:<16}{epochs:>7}{variant:>10}{r['seconds']:>9.1f}{r['images'] / r['seconds']:>9.1f}"
                  f"{r['epoch_seconds'][0]:>10.1f}{later_rate:>12}{r['peak_mib']:>10.0f}"
                  f"{r['best_val_accuracy']:>10.4f}  {r['setup']}", flush=True)
        ratio = results["tutorial"]["seconds"] / results["pipeline"]["seconds"]
        gain = results["pipeline"]["best_val_accuracy"] - results["tutorial"]["best_val_accuracy"]
        line = f"{mode:<16}{'':>7}{'ratio':>10}{ratio:>8.1f}x faster"
        if epochs > 1:
            later = [sum(results[v]["epoch_seconds"][1:]) for v in ("tutorial", "pipeline")]
            line += f" ({later[0] / later[1]:.1f}x after the first epoch)"
        print(f"{line}; best val accuracy {gain:+.4f}", flush=True)


def inference_ms(bf16: bool, repeats: int = 8) -> float:
    import torch

    from transfer.models.backbones import build_model
    from transfer.models.folding import fold_batchnorm

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


def inference_dtype(args) -> None:
    """bfloat16 against float32 for the passes without gradients: speed of inference, and the accuracy of
    the modes whose frozen part's outputs are computed in that pass.

    Run from the project root after `dvc repro pack` (minutes on a 2-core CPU):

        python -m bench.speed inference-dtype                      # frozen, partial, freeze_unfreeze; seed 0
        python -m bench.speed inference-dtype --modes frozen --seeds 0 1 2

    Prints, per dtype, ms an image of EfficientNet-Lite0 inference (batch 16, 224 px, BatchNorm folded,
    channels-last), then per mode and seed the best val accuracy and the seconds of the frozen part's pass.
    """
    import torch

    from transfer.core import params as params_module
    from transfer.core.devices import cpu_has_bf16
    from transfer.core.settings import mode_settings
    from transfer.data.images import store_splits
    from transfer.data.split_files import read_classes
    from transfer.training.loop import ResumeState
    from transfer.training.run import run_training

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
                settings = mode_settings(params_module.check(params), mode)
                with tempfile.TemporaryDirectory() as tmp:
                    _, _, result = run_training(settings, len(classes), ResumeState(Path(tmp) / "state.pt", "bench"),
                                                images)
                frozen_pass = result.train_seconds - sum(row["seconds"] for row in result.history)
                print(f"{mode:16s} seed {seed} {dtype:9s} best val accuracy {result.best_accuracy:.4f} "
                      f"(epoch {result.best_epoch}), train {result.train_seconds:6.1f} s, "
                      f"of which the frozen part's pass {frozen_pass:6.1f} s", flush=True)
