"""Stage train@<mode>: train one transfer mode, write models/<mode>.pt and dvclive/<mode>/."""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

from stages import params as params_module
from stages.backbones import build_model, count_params, save_checkpoint
from stages.common import UserError, atomic_path, log, run_main
from stages.datasets import SPLIT_DIR, decode_all, read_classes, read_split, train_transform, working_preprocess
from stages.training import Fit, TrainData, pick_device

RESUME_DIR = Path(".resume")


def fingerprint(settings: dict) -> str:
    """What a resumable state must match: the mode's settings and the exact split."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in ("train.csv", "val.csv", "classes.json"):
        digest.update((SPLIT_DIR / name).read_bytes())
    return digest.hexdigest()


def write_logs(mode: str, history: list[dict], batch_grid) -> None:
    """dvclive/<mode>/: per-epoch metrics as DVC plots and a summary, written whole at the end."""
    from dvclive import Live

    with atomic_path(Path("dvclive") / mode) as tmp:
        live = Live(dir=str(tmp), save_dvc_exp=False, dvcyaml=None, report=None)
        for row in history:
            live.step = row["epoch"]
            for split in ("train", "val"):
                live.log_metric(f"{split}/loss", row[f"{split}_loss"])
                live.log_metric(f"{split}/acc", row[f"{split}_acc"])
            live.log_metric("lr", row["lr"])
            live.log_metric("epoch_seconds", round(row["seconds"], 3), plot=True)
        live.log_image("train_batch.png", batch_grid)
        live.end()


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


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train one transfer mode (a row of params.yaml `modes`).")
    parser.add_argument("mode")
    mode = parser.parse_args(argv).mode
    params = params_module.load()
    settings = params_module.mode_settings(params, mode)
    device = pick_device(settings["device"])
    torch.manual_seed(settings["seed"])

    classes = read_classes()
    train_split, val_split = read_split("train"), read_split("val")
    model, preprocess = build_model(settings["arch"], len(classes), settings["pretrained"])
    preprocess = working_preprocess(preprocess, settings["image_size"])
    log(f"train@{mode}: {settings['arch']} ({'ImageNet' if settings['pretrained'] else 'random'} init) on "
        f"{device}, {len(train_split.paths)} train / {len(val_split.paths)} val images "
        f"at {preprocess['image_size']} px")
    data = TrainData(decode_all(train_split.paths, preprocess), train_split.labels,
                     decode_all(val_split.paths, preprocess), val_split.labels, preprocess)

    state_file = RESUME_DIR / mode / "state.pt"
    try:
        result = Fit(model, data, settings, device, state_file, fingerprint(settings)).run()
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"out of GPU memory at train.batch_size {settings['batch_size']}; try a smaller one, "
                        f"e.g. dvc exp run -S ++modes.{mode}.batch_size={max(1, settings['batch_size'] // 2)}"
                        ) from None

    trainable, total = result.trainable_params, count_params(model)[1]
    last_state = {k: v.cpu() for k, v in model.state_dict().items()}
    model.load_state_dict(result.best_state)
    class_names = [c["name"] for c in classes]
    meta = {"arch": settings["arch"], "mode": mode, "classes": [c["folder"] for c in classes],
            "class_names": class_names, "preprocess": preprocess, "best_epoch": result.best_epoch,
            "val_accuracy": result.best_accuracy, "epochs": len(result.history),
            "train_seconds": result.train_seconds, "trainable_params": trainable, "total_params": total,
            "history": result.history, "settings": settings, "peak_memory_mib": peak_memory_mib()}
    write_logs(mode, result.history, augmented_batch_grid(data, settings, class_names))
    save_checkpoint(Path("models") / f"{mode}.pt", model.cpu(), meta, last_state_dict=last_state)
    shutil.rmtree(RESUME_DIR / mode, ignore_errors=True)
    log(f"train@{mode}: best val accuracy {result.best_accuracy:.4f} at epoch {result.best_epoch}, "
        f"{result.train_seconds:.1f} s, peak memory {meta['peak_memory_mib']} MiB")


if __name__ == "__main__":
    main()
