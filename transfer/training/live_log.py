"""What a run shows as it trains: its DVCLive logs, epoch by epoch, and a training batch as the loader
augments it."""
from __future__ import annotations

import torch

from transfer.core.paths import running_live_dir
from transfer.core.settings import ModeSettings
from transfer.data.images import TrainData
from transfer.data.transforms import train_transform


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

    from transfer.core.figures import image_grid

    torch.manual_seed(settings.seed)
    transform = train_transform(data.preprocess, settings.augment)
    mean = torch.tensor(data.preprocess["mean"]).view(3, 1, 1)
    std = torch.tensor(data.preprocess["std"]).view(3, 1, 1)
    picks = torch.randperm(len(data.train_images))[:count].tolist()
    images = [((transform(data.train_images[i]) * std + mean).clamp(0, 1) * 255).byte() for i in picks]
    return image_grid([to_pil_image(img) for img in images], [class_names[data.train_labels[i]] for i in picks],
                      columns=4, title="A training batch as the loader augments it")
