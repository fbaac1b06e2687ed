"""Speed: the pipeline's training against the plain tutorial loop, and what its parts cost.

Run by hand from the project root (never in CI), one subcommand at a time:

    python -m bench.speed tutorial [--quick | --modes frozen --epochs 25]    # after `dvc repro pack`
    python -m bench.speed step [--batch 32 --steps 6]
    python -m bench.speed backbones efficientnet_lite0 resnet18 timm/convnext_atto
    python -m bench.speed loader [--mode scratch --workers 0 2 4 8]          # after `dvc repro split`
    python -m bench.speed inference-dtype [--modes frozen --seeds 0 1 2]     # after `dvc repro pack`

`python -m bench.speed <subcommand> --help` says what it measures and prints. tutorial and
inference-dtype train, and live in bench/speed_training.py; the GPU's layouts are bench/gpu.py."""
from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch

from bench import ROOT, speed_training

BATCH = 16  # backbones


def per_image_ms(step, batch: int, steps: int) -> float:
    """Mean ms an image of `steps` calls of step() after two untimed ones."""
    for _ in range(2):  # oneDNN builds its kernels for a shape on first use
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / (steps * batch) * 1000


def step_time(args) -> None:
    """What one training step of finetune costs, in ms an image, for each speed-up the pipeline uses.

    Run by hand from the project root (a minute on a 2-core CPU; nothing else should be running):

        python -m bench.speed step
        python -m bench.speed step --batch 32 --steps 6

    Each row adds one thing to the row above, on the same random batch and a pretrained
    EfficientNet-Lite0 with BatchNorm on its ImageNet statistics (finetune's keep_bn_stats): the default
    memory layout, channels-last, BatchNorm folded into the convolutions (transfer.models.folding.fold_batchnorm),
    then 160 px training crops (finetune's augment.crop_size) instead of 224 px. Then the same for
    inference (validation), which runs at 224 px.
    """
    import transfer.core.devices  # noqa: F401  - its allocator settings, as in a train stage

    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}")
    rows = [("default layout", torch.contiguous_format, False, 224),
            ("channels-last", torch.channels_last, False, 224),
            ("+ BatchNorm folded", torch.channels_last, True, 224),
            ("+ 160 px crops", torch.channels_last, True, 160)]
    for name, fmt, fold, size in rows:
        train, infer = measure_step(fmt, fold, size, args.batch, args.steps)
        print(f"{name:<22} train step {train:6.1f} ms/image   inference at 224 px {infer:5.1f} ms/image", flush=True)


def measure_step(fmt: torch.memory_format, fold: bool, size: int, batch: int, steps: int) -> tuple[float, float]:
    from transfer.models.backbones import build_model
    from transfer.models.folding import fold_batchnorm
    from transfer.training.trainable import train_mode

    torch.manual_seed(0)
    model, _ = build_model("efficientnet_lite0", 2, pretrained=True)
    model = model.to(memory_format=fmt)
    if fold:
        fold_batchnorm(model, 224)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_mode(model, keep_bn_stats=True)
    train = per_image_ms(train_step, batch, steps)
    model.eval()
    x224 = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    with torch.inference_mode():
        infer = per_image_ms(lambda: model(x224), batch, steps)
    return train, infer


def median_ms_per_image(step, device: torch.device, repeats: int) -> float:
    """Median ms an image of `repeats` timed calls of step() after one untimed one."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000 / BATCH


def measure_backbone(arch: str, image_size: int | None, device: torch.device, repeats: int) -> dict:
    from transfer.models.backbones import build_model, count_params
    from transfer.models.cost import model_cost
    from transfer.models.folding import fold_batchnorm

    model, preprocess = build_model(arch, 2, pretrained=False)
    size = image_size or preprocess["image_size"]
    model.to(device)
    x = torch.randn(BATCH, 3, size, size, device=device)
    y = torch.randint(0, 2, (BATCH,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_ms = median_ms_per_image(train_step, device, repeats)
    model.eval()
    fold_batchnorm(model, size)

    def infer():
        with torch.inference_mode():
            model(x)

    infer_ms = median_ms_per_image(infer, device, repeats)
    latency_ms = model_cost(model, size, device, BATCH)["latency_batch_1"]["median_ms"]
    return {"arch": arch, "params": count_params(model)[1], "size": size, "infer_ms": infer_ms,
            "train_ms": train_ms, "latency_ms": latency_ms}


def backbones(args) -> None:
    """Backbones side by side: parameters, inference and training-step time per image at batch 16, and
    the latency evaluate records (`latency_ms`: one image, one thread, the median of 50 runs).

        python -m bench.speed backbones efficientnet_lite0 resnet18 timm/mobilenetv3_large_100 timm/convnext_atto

    Each backbone is built as the pipeline builds it (transfer.models.backbones.build_model, 2 classes) at random
    init, so that it runs offline (the time of a network does not depend on its weights), at its own
    input size unless --image-size is given. Inference: eval mode, BatchNorm folded as evaluate and
    predict run it. Train step: forward, backward and an SGD step of the whole network. Each figure is
    the median of --repeats timed batches after one untimed one, on the CPU (--device cuda for a GPU).
    """
    import transfer.core.devices  # noqa: F401  - its allocator settings, as in a train stage

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}, {device}, batch {BATCH}, random init")
    print(f"{'arch':32} {'params':>12} {'px':>4} {'inference ms/img':>17} {'train step ms/img':>18} "
          f"{'latency_ms':>11}")
    for arch in args.archs:
        row = measure_backbone(arch, args.image_size, device, args.repeats)
        print(f"{row['arch']:32} {row['params']:12,} {row['size']:4} {row['infer_ms']:17.1f} {row['train_ms']:18.1f} "
              f"{row['latency_ms']:11.1f}", flush=True)


def loader(args) -> None:
    """The training loader alone: images per second out of the decoded-once images, with a fresh loader
    per epoch against one whose workers persist, for several worker counts.

    Run by hand from the project root after `dvc repro split` (it decodes data/raw itself):

        python -m bench.speed loader                     # finetune's augmentations, batch 16
        python -m bench.speed loader --mode scratch --workers 0 2 4 8

    On a GPU machine it also copies each batch to the GPU from pinned memory, as training does. Compare
    its images per second with a training step's (python -m bench.gpu) to see whether the CPU-side
    augmentation can hold the GPU back.
    """
    from transfer.core import params as params_module
    from transfer.core.paths import PARAMS_FILE
    from transfer.core.settings import mode_settings
    from transfer.data.images import TensorImages, decode_all
    from transfer.data.split_files import read_classes, read_split
    from transfer.data.transforms import train_transform, working_preprocess
    from transfer.models.backbones import build_model

    settings = mode_settings(params_module.load(ROOT / PARAMS_FILE), args.mode)
    _, pre = build_model(settings.arch, len(read_classes()), False)
    pre = working_preprocess(pre, settings.image_size)
    split = read_split("train")
    images = decode_all(split.paths, pre)
    dataset = TensorImages(images, split.labels, train_transform(pre, settings.augment))
    cuda = torch.cuda.is_available()
    print(f"# {args.mode}: {len(images)} images at {pre['image_size']} px, batch {settings.batch_size}, "
          f"{'copied to ' + torch.cuda.get_device_name() if cuda else 'CPU only'}")
    print(f"{'workers':>7} {'loader':>11} {'epoch s (each)':>30} {'img/s after epoch 1':>20}")
    for workers in args.workers:
        for persistent in (False, True) if workers else (False,):
            times = loader_epochs(dataset, settings.batch_size, workers, persistent, args.epochs, cuda)
            rate = len(images) * (len(times) - 1) / sum(times[1:])
            print(f"{workers:>7} {'persistent' if persistent else 'per epoch':>11} "
                  f"{' '.join(f'{t:.3f}' for t in times):>30} {rate:>20.0f}", flush=True)


def loader_epochs(dataset, batch: int, workers: int, persistent: bool, epochs: int, cuda: bool) -> list[float]:
    """Seconds of each epoch through the loader (a fresh one each epoch, or one for all)."""
    from transfer.training.image_batches import EpochSampler

    data = None
    times = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        if data is None or not persistent:
            data = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=EpochSampler(len(dataset), 0),
                                               num_workers=workers, pin_memory=cuda, persistent_workers=persistent)
        data.sampler.set_epoch(epoch)
        for x, _ in data:
            if cuda:
                x.to("cuda", non_blocking=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def subcommand(sub, name: str, run, summary: str) -> argparse.ArgumentParser:
    """The subparser of `name`: `run(args)` does its work, and its docstring is the subcommand's --help."""
    parser = sub.add_parser(name, help=summary, description=inspect.getdoc(run),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(required=True, metavar="subcommand")
    p = subcommand(sub, "tutorial", speed_training.tutorial, "the plain tutorial loop against the pipeline's training")
    p.add_argument("--modes", default="frozen,finetune,scratch")
    p.add_argument("--epochs", type=int, help="the same number for every mode (default: per mode)")
    p.add_argument("--quick", action="store_true", help="2 epochs of each mode: a smoke run")
    p.add_argument("--child", choices=("tutorial", "pipeline"), help=argparse.SUPPRESS)
    p = subcommand(sub, "step", step_time, "a finetune training step, one speed-up after another")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p = subcommand(sub, "backbones", backbones, "backbones side by side: parameters, inference and step time")
    p.add_argument("archs", nargs="+", help="model.arch values: torchvision names, efficientnet_lite0, timm/<name>")
    p.add_argument("--image-size", type=int, default=None, help="px (default: each backbone's own)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p = subcommand(sub, "loader", loader, "the training loader alone: images per second")
    p.add_argument("--mode", default="finetune")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 4, 8])
    p.add_argument("--epochs", type=int, default=4)
    p = subcommand(sub, "inference-dtype", speed_training.inference_dtype,
                   "bfloat16 against float32 without gradients: speed and accuracy")
    p.add_argument("--modes", nargs="+", default=["frozen", "partial", "freeze_unfreeze"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    return top.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
