"""One training run of a mode, as the train stage, the bench tools and the tests make it: the seeded
model, its data, the loop, the live logs, and what its checkpoint holds besides the weights."""
from __future__ import annotations

import sys

import torch

from transfer.core.devices import pick_device
from transfer.core.paths import running_live_dir
from transfer.core.settings import ModeSettings
from transfer.core.stage import log
from transfer.data.loaders import TrainData, store_splits, train_transform, working_preprocess
from transfer.models.backbones import TransferNet, build_model
from transfer.training.distributed import OneProcess
from transfer.training.loop import FitResult, ResumeState, fit
from transfer.training.trainable import check_top_blocks


def new_model(settings: ModeSettings, num_classes: int) -> tuple[TransferNet, dict]:
    """The mode's network, seeded, and its preprocessing at the mode's working size."""
    torch.manual_seed(settings.seed)
    model, preprocess = build_model(settings.arch, num_classes, settings.pretrained)
    return model, working_preprocess(preprocess, settings.image_size)


def run_training(settings: ModeSettings, num_classes: int, resume: ResumeState, make_data=None,
                 before_training=None, on_epoch=None, strategy: OneProcess | None = None
                 ) -> tuple[TransferNet, TrainData, FitResult]:
    """The whole set-up of a training run, shared by the stage, the bench scripts and the tests:
    build the seeded model, get the data at its working size (`make_data(preprocess)`; by default
    data/store within train.memory_budget_mb), fit (in this process, or as one of `strategy`'s)."""
    strategy = strategy or OneProcess(pick_device(settings.device))
    device = strategy.device
    model, preprocess = new_model(settings, num_classes)
    check_top_blocks(model, settings.arch, settings.phases, f"modes.{settings.mode}")
    data = make_data(preprocess) if make_data else store_splits(preprocess, settings.memory_budget_mb)
    where = f"{device} x {strategy.world_size} processes" if strategy.world_size > 1 else str(device)
    log(f"train@{settings.mode}: {settings.arch} ({'ImageNet' if settings.pretrained else 'random'} init) "
        f"on {where}, {len(data.train_labels)} train / {len(data.val_labels)} val images "
        f"at {preprocess['image_size']} px")
    if before_training:
        before_training(model)
    return model, data, fit(model, data, settings, device, resume, on_epoch, strategy)


class SharedResume(ResumeState):
    """The resumable state as the processes besides rank 0 see it: they resume from it; rank 0 alone saves it."""

    def save(self, *args) -> None:
        pass


class LiveLog:
    """The DVCLive logs as training runs, in .resume/<mode>/dvclive/ (running_live_dir): each epoch's
    metrics (DVC plots and a summary) as soon as the epoch is saved, so that a reader can follow a
    running stage; the stage publishes the folder as dvclive/<mode>/ with the model. A resumed run
    starts the folder again and logs the restored epochs first."""

    def __init__(self, mode: str):
        from dvclive import Live

        self.live = Live(dir=str(running_live_dir(mode)), save_dvc_exp=False, dvcyaml=None, report=None)

    def epoch(self, row: dict) -> None:
        live = self.live
        live.step = row["epoch"]
        for split in ("train", "val"):
            live.log_metric(f"{split}/loss", row[f"{split}_loss"])
            live.log_metric(f"{split}/acc", row[f"{split}_acc"])
        live.log_metric("lr", row["lr"])
        live.log_metric("epoch_seconds", round(row["seconds"], 3), plot=True)
        live.next_step()

    def end(self, batch_grid) -> None:
        self.live.log_image("train_batch.png", batch_grid)
        self.live.end()


def augmented_batch_grid(data: TrainData, settings: ModeSettings, class_names: list[str], count: int = 8):
    """The first training batch as the loader augments it, un-normalised, with class names."""
    from torchvision.transforms.v2.functional import to_pil_image

    from transfer.evaluation.figures import image_grid

    torch.manual_seed(settings.seed)
    transform = train_transform(data.preprocess, settings.augment)
    mean = torch.tensor(data.preprocess["mean"]).view(3, 1, 1)
    std = torch.tensor(data.preprocess["std"]).view(3, 1, 1)
    picks = torch.randperm(len(data.train_images))[:count].tolist()
    images = [((transform(data.train_images[i]) * std + mean).clamp(0, 1) * 255).byte() for i in picks]
    return image_grid([to_pil_image(img) for img in images], [class_names[data.train_labels[i]] for i in picks],
                      columns=4, title="A training batch as the loader augments it")


def peak_memory_mib() -> float | None:
    """This process's peak resident memory so far (max RSS) in MiB: decoding, model and training."""
    try:
        import resource
    except ImportError:  # Windows: no getrusage
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)


def checkpoint_meta(mode: str, settings: ModeSettings, classes: list[dict], preprocess: dict, result: FitResult,
                    total_params: int) -> dict:
    """What models/modes/<mode>.pt holds besides the weights: plain data only."""
    return {"arch": settings.arch, "mode": mode, "classes": [c["folder"] for c in classes],
            "class_names": [c["name"] for c in classes], "preprocess": preprocess, "best_epoch": result.best_epoch,
            "val_accuracy": result.best_accuracy, "epochs": len(result.history),
            "train_seconds": result.train_seconds, "trainable_params": result.trainable_params,
            "total_params": total_params, "history": result.history, "settings": settings.as_dict(),
            # early stopping on: the epoch the run ended at (stopped early, or at its last epoch)
            "stopped_epoch": (result.stopped_epoch or result.history[-1]["epoch"]) if settings.patience else None,
            "peak_memory_mib": peak_memory_mib()}
