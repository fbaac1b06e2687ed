"""Stage train@<mode>: train one transfer mode, write models/<mode>.pt and dvclive/<mode>/ (as one set)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import torch

from stages import params as params_module
from stages import publish
from stages.backbones import TransferNet, build_model, check_arch, check_top_blocks, count_params
from stages.checkpoints import save_checkpoint
from stages.common import UserError, check_no_links, log, out_of_memory, run_main
from stages.datasets import TrainData, read_classes, store_splits, train_transform, working_preprocess
from stages.devices import pick_device
from stages.distributed import LAUNCHED, OneProcess, check_nproc, launch, start, stop
from stages.imports import code_digest
from stages.paths import (
    CLASSES_JSON,
    TRAIN_CSV,
    VAL_CSV,
    live_dir,
    model_file,
    resume_dir,
    resume_state,
    running_live_dir,
)
from stages.training import FitResult, ResumeState, fit

PARAMS = ("model", "train", "modes.{mode}")  # as dvc.yaml's train stage declares them


def fingerprint(settings: dict) -> str:
    """What a resumable state must match: the mode's settings, the exact split and the training code."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in (TRAIN_CSV, VAL_CSV, CLASSES_JSON):
        digest.update(path.read_bytes())
    digest.update(code_digest("stages.train").encode())
    return digest.hexdigest()


def new_model(settings: dict, num_classes: int) -> tuple[TransferNet, dict]:
    """The mode's network, seeded, and its preprocessing at the mode's working size."""
    torch.manual_seed(settings["seed"])
    model, preprocess = build_model(settings["arch"], num_classes, settings["pretrained"])
    return model, working_preprocess(preprocess, settings["image_size"])


def run_training(settings: dict, num_classes: int, resume: ResumeState, make_data=None,
                 before_training=None, on_epoch=None, strategy: OneProcess | None = None
                 ) -> tuple[TransferNet, TrainData, FitResult]:
    """The whole set-up of a training run, shared by the stage, the bench scripts and the tests:
    build the seeded model, get the data at its working size (`make_data(preprocess)`; by default
    data/store within train.memory_budget_mb), fit (in this process, or as one of `strategy`'s)."""
    strategy = strategy or OneProcess(pick_device(settings["device"]))
    device = strategy.device
    model, preprocess = new_model(settings, num_classes)
    check_top_blocks(model, settings["arch"], settings["phases"], f"modes.{settings['mode']}")
    data = make_data(preprocess) if make_data else store_splits(preprocess, settings["memory_budget_mb"])
    where = f"{device} x {strategy.world_size} processes" if strategy.world_size > 1 else str(device)
    log(f"train@{settings['mode']}: {settings['arch']} ({'ImageNet' if settings['pretrained'] else 'random'} init) "
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


def augmented_batch_grid(data: TrainData, settings: dict, class_names: list[str], count: int = 8):
    """The first training batch as the loader augments it, un-normalised, with class names."""
    from torchvision.transforms.v2.functional import to_pil_image

    from stages.plotting import image_grid

    torch.manual_seed(settings["seed"])
    transform = train_transform(data.preprocess, settings["augment"])
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


def checkpoint_meta(mode: str, settings: dict, classes: list[dict], preprocess: dict, result: FitResult,
                    total_params: int) -> dict:
    """What models/<mode>.pt holds besides the weights: plain data only."""
    return {"arch": settings["arch"], "mode": mode, "classes": [c["folder"] for c in classes],
            "class_names": [c["name"] for c in classes], "preprocess": preprocess, "best_epoch": result.best_epoch,
            "val_accuracy": result.best_accuracy, "epochs": len(result.history),
            "train_seconds": result.train_seconds, "trainable_params": result.trainable_params,
            "total_params": total_params, "history": result.history, "settings": settings,
            # early stopping on: the epoch the run ended at (stopped early, or at its last epoch)
            "stopped_epoch": (result.stopped_epoch or result.history[-1]["epoch"]) if settings["patience"] else None,
            "peak_memory_mib": peak_memory_mib()}


@run_main(resumes=True)
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train one transfer mode (a row of params.yaml `modes`).")
    parser.add_argument("mode")
    mode = parser.parse_args(argv).mode
    check_no_links(running_live_dir(mode))  # .resume/<mode>/dvclive: written as training runs, then removed
    params = params_module.declared(params_module.load(arch_check=check_arch), PARAMS, mode)
    settings = params_module.mode_settings(params, mode)
    classes = read_classes()
    if settings["nproc"] > 1 and LAUNCHED not in os.environ:  # this stage again, as nproc processes
        check_nproc(settings["nproc"], settings["device"])
        launch("stages.train", [mode], settings["nproc"])
        return
    strategy = start(settings["device"])
    try:
        resume = (ResumeState if strategy.is_main else SharedResume)(resume_state(mode), fingerprint(settings))
        live = LiveLog(mode) if strategy.is_main else None  # only rank 0 writes files
        model, data, result = run_training(settings, len(classes), resume, on_epoch=live and live.epoch,
                                           strategy=strategy)
    except (RuntimeError, MemoryError) as err:  # CUDA's, MPS's or the CPU's allocator gave up
        if not out_of_memory(err):
            raise
        batch = settings["batch_size"]
        raise UserError(f"out of {out_of_memory(err)} memory at train.batch_size {batch}; try a smaller one, "
                        f"e.g. dvc exp run -S ++modes.{mode}.batch_size={max(1, batch // 2)}") from None
    stop(strategy)
    if not strategy.is_main:
        return
    model.load_state_dict(result.best_state)
    meta = checkpoint_meta(mode, settings, classes, data.preprocess, result, count_params(model)[1])
    meta["world_size"] = strategy.world_size  # evaluate records it in metrics/<mode>.json
    live.end(augmented_batch_grid(data, settings, meta["class_names"]))
    with publish.outputs(f"train@{mode}", (model_file(mode), live_dir(mode))) as staged:
        os.replace(running_live_dir(mode), staged(live_dir(mode)))
        save_checkpoint(staged(model_file(mode)), model.cpu(), meta)
    publish.remove(resume_dir(mode))
    log(f"train@{mode}: best val accuracy {result.best_accuracy:.4f} at epoch {result.best_epoch}, "
        f"{result.train_seconds:.1f} s, peak memory {meta['peak_memory_mib']} MiB")


if __name__ == "__main__":
    main()
