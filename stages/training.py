"""The one training loop every transfer mode runs.

A mode is data (stages.params.mode_settings): a list of phases, each saying what trains, at what
rate and for how long. `fit` runs the phases in order. A phase that trains the head alone on a
frozen pretrained body pushes each image (and a fixed number of augmented views of it) through the
body once, then trains the head on those cached features: the result is the same as the tutorials'
frozen loop, without recomputing the frozen body every epoch.

Every epoch is seeded from (seed, epoch), and the state after each epoch is saved aside, so a killed
run resumes at its last finished epoch and ends exactly where an uninterrupted run would."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from stages.backbones import TransferNet, fold_batchnorm, frozen_split, set_trainable, train_mode
from stages.common import UserError, atomic_path, log
from stages.datasets import TensorImages, eval_transform_tensor, train_transform

CPU_THREADS = torch.get_num_threads()


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of handing it back to the OS after every batch.

    Activations of a CNN are large, short-lived blocks; by default glibc unmaps each on free and
    the next batch faults the pages in again, which on a virtual machine costs more time in the
    kernel than the convolutions take (measured here: 22 s of 55 s in the kernel, 2.5 s after).
    Blocks above the largest mmap threshold (32 MiB: one activation of a batch of 16 at 224 px) would
    still be mapped and unmapped each time, so mmap is switched off."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): nothing to tune
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # the largest value glibc accepts ...
    libc.mallopt(M_MMAP_MAX, 0)  # ... and above it no mmap at all (a batch-64 forward: 17 -> 13 ms/image)
    libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    libc.mallopt(M_TOP_PAD, 256 * 2**20)


keep_freed_memory()


@dataclass
class TrainData:
    train_images: list[torch.Tensor]  # uint8 CHW, short side = preprocess["resize_size"]
    train_labels: list[int]
    val_images: list[torch.Tensor]
    val_labels: list[int]
    preprocess: dict


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int = 0
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    train_seconds: float = 0.0
    trainable_params: int = 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {name} asked for, but no CUDA GPU is available (use auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device: mps asked for, but Apple MPS is not available (use auto or cpu)")
    return torch.device(name)


def inference_batch(device: torch.device) -> int:
    """Images per forward pass without gradients (frozen features, validation).

    On a CPU, small batches stay in cache and in already-mapped memory: EfficientNet-Lite0 at 224 px
    takes 13 ms an image in batches of 16 and 17 ms in batches of 64 (2-core machine)."""
    return 16 if device.type == "cpu" else 128


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run: everything random in that epoch derives from it alone."""
    return seed * 1_000_003 + epoch


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed the global RNG (dropout) and return a generator (shuffling cached features) for this epoch
    alone; the image loader draws its order and augmentations from (seed, epoch) itself (EpochSampler)."""
    torch.manual_seed(epoch_seed(seed, epoch))
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


class EpochSampler(torch.utils.data.Sampler):
    """The keys of one epoch for TensorImages: a shuffled order and a seed per image, both drawn from
    (run seed, epoch) alone. Call set_epoch before each pass; one loader, its worker processes kept
    alive, then serves every epoch of a phase, and any epoch is the same in a resumed run."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        this_epoch = epoch_seed(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(this_epoch)).tolist()
        return iter([(i, epoch_seed(this_epoch, i) % 2**63) for i in order])


def worker_count(setting, device: torch.device) -> int:
    if setting != "auto":
        return setting
    # On a small CPU the model needs every core and in-memory crops are cheap: load in-process.
    return min(8, CPU_THREADS) if device.type == "cuda" else (0 if CPU_THREADS <= 4 else 2)


def make_optimizer(model: TransferNet, settings: dict, lr: float) -> torch.optim.Optimizer:
    body = [p for p in model.body.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if body:
        groups.append({"params": body, "lr": lr * settings["backbone_lr_scale"]})
    wd = settings["weight_decay"]
    if settings["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=settings["momentum"], weight_decay=wd)
    if settings["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


def make_scheduler(optimizer, settings: dict, epochs: int, steps_per_epoch: int):
    """A per-step schedule over one phase: an optional linear warm-up of `warmup_epochs`, then cosine,
    step (StepLR by epochs), onecycle (which has a warm-up of its own) or none."""
    total = epochs * steps_per_epoch
    kind = settings["scheduler"]
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    # Warm-up: a new random head's first, large gradients reach the pretrained body at a small rate.
    warm = min(round(settings["warmup_epochs"] * steps_per_epoch), total - 1)
    if kind == "cosine":
        rest = total - warm
        decay = lambda step: 0.5 * (1 + math.cos(math.pi * min(step - warm, rest) / rest))  # noqa: E731
    elif kind == "step":
        decay = lambda step: settings["gamma"] ** (step // (settings["step_size"] * steps_per_epoch))  # noqa: E731
    else:
        decay = lambda step: 1.0  # noqa: E731
    factor = lambda step: (step + 1) / (warm + 1) if step < warm else decay(step)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Stepper:
    """One optimisation step per batch on any input (images or cached features) and model part."""

    def __init__(self, module: nn.Module, criterion, optimizer, scheduler, device, amp: bool):
        self.module, self.criterion, self.optimizer, self.scheduler = module, criterion, optimizer, scheduler
        self.device, self.amp = device, amp

    def forward(self, x):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.module(x).float()

    def train_batch(self, x, y) -> tuple[float, int]:
        logits = self.forward(x)
        loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item() * len(y), (logits.argmax(1) == y).sum().item()


def memory_format(device: torch.device, train_batch_size: int = 0) -> torch.memory_format:
    """The layout of models and image batches: channels-last where it measured faster.

    On a CPU always: an EfficientNet-Lite0 training step at 224 px took 47 ms an image, against 60 ms
    in the default layout (2-core machine, bench/step_time.py). On a CUDA GPU only for training batches of 64 and more:
    cuDNN sets up its channels-last kernels in each new process (5-15 s before the first step on an
    H100, against 1 s), and a step of 16 images is slower in it (19 ms against 15 ms), one of 64
    faster (23 ms against 33 ms)."""
    if device.type == "cuda" and train_batch_size < 64:
        return torch.contiguous_format
    return torch.channels_last


def to_device(x: torch.Tensor, device: torch.device, fmt: torch.memory_format) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


@torch.inference_mode()
def evaluate_batches(module: nn.Module, batches, criterion, device, amp: bool, fmt) -> tuple[float, float]:
    """Mean loss and accuracy of `module` (eval mode) over (x, y) batches."""
    module.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = to_device(x, device, fmt), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = module(x).float()
        loss_sum += criterion(logits, y).item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    return loss_sum / count, correct / count


def crop_stack(images: list[torch.Tensor], preprocess: dict) -> torch.Tensor:
    """Center-cropped uint8 batch of the val images (normalised per batch on the device)."""
    size = preprocess["image_size"]
    crop = eval_transform_tensor(preprocess).transforms[0]
    return torch.stack([crop(img) for img in images]) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)


def normalized_batches(stack: torch.Tensor, labels: torch.Tensor, preprocess: dict, batch_size: int):
    """Float batches of a uint8 stack, normalised where the stack lives (on a GPU, the val stack does)."""
    mean = torch.tensor(preprocess["mean"], device=stack.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"], device=stack.device).view(1, 3, 1, 1)
    for i in range(0, len(stack), batch_size):
        yield (stack[i:i + batch_size].float() / 255 - mean) / std, labels[i:i + batch_size]


@torch.inference_mode()
def cached_features(encoder: nn.Module, data: TrainData, settings: dict, views: int, device, amp: bool, fmt):
    """Frozen-encoder outputs for `views` augmented views of every training image and for every val
    image: the frozen part's work done once, not once per epoch."""
    encoder.eval()
    batch = inference_batch(device)
    transform = train_transform(data.preprocess, settings["augment"])
    torch.manual_seed(settings["seed"] * 1_000_003 - 1)  # the views are part of the seeded run

    def run(xs):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return encoder(to_device(xs, device, fmt)).float()

    train = []
    for _ in range(views):
        feats = [run(torch.stack([transform(img) for img in data.train_images[i:i + batch]]))
                 for i in range(0, len(data.train_images), batch)]
        train.append(torch.cat(feats))
    val_stack = crop_stack(data.val_images, data.preprocess)
    val_labels = torch.tensor(data.val_labels)
    val = torch.cat([run(x) for x, _ in normalized_batches(val_stack, val_labels, data.preprocess, batch)])
    return torch.stack(train), val


class Fit:
    """Runs a mode's phases over the data, logging and checkpointing after every epoch."""

    def __init__(self, model: TransferNet, data: TrainData, settings: dict, device: torch.device,
                 state_file: Path, fingerprint: str):
        self.model, self.data, self.s, self.device = model, data, settings, device
        self.state_file, self.fingerprint = state_file, fingerprint
        # bf16 autocast where the GPU computes in bf16 (Ampere and later); fp32 elsewhere, CPUs included
        self.amp = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
        self.fmt = memory_format(device, settings["batch_size"])
        self.criterion = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"])
        self.result = FitResult()
        # Decoded and cropped once; on a GPU it stays there, so validation moves no images per epoch.
        self.val_stack = crop_stack(data.val_images, data.preprocess).to(device)
        self.val_labels = torch.tensor(data.val_labels)
        self.train_labels = torch.tensor(data.train_labels)

    # --- resumable state -------------------------------------------------------------------
    def load_state(self) -> dict | None:
        if not self.state_file.exists():
            return None
        try:
            state = torch.load(self.state_file, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a damaged state file only costs the resume
            return None
        return state if state.get("fingerprint") == self.fingerprint else None

    def save_state(self, epoch: int, optimizer, scheduler) -> None:
        with atomic_path(self.state_file) as tmp:
            torch.save({"fingerprint": self.fingerprint, "epoch": epoch, "model": self.model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "result": self.result}, tmp)

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> FitResult:
        state = self.load_state()
        done = 0
        if state:
            done, self.result = state["epoch"], state["result"]
            self.model.load_state_dict(state["model"])
            log(f"resuming after epoch {done} (state in {self.state_file})")
        self.model.to(self.device).to(memory_format=self.fmt)
        folded = fold_batchnorm(self.model, self.data.preprocess["image_size"])
        log(f"{folded} BatchNorm layers fold into the convolution before them while on running statistics")
        first = 1
        for phase in self.s["phases"]:
            last = first + phase["epochs"] - 1
            if done < last:
                self.run_phase(phase, first, last, done, state if first <= done else None)
            first = last + 1
        return self.result

    def run_phase(self, phase: dict, first: int, last: int, done: int, state: dict | None) -> None:
        set_trainable(self.model, phase["trainable"], self.s["top_blocks"])
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.result.trainable_params = max(self.result.trainable_params, trainable)
        # Where the frozen part is a prefix of a pretrained model (the body under a head, the lower
        # blocks under `top`), its outputs are computed once and the rest trains on them.
        split = frozen_split(self.model, phase["trainable"], self.s["top_blocks"])
        on_features = split is not None
        n = len(self.data.train_labels)
        batch_size = self.s["batch_size"]
        drop_last = n % batch_size == 1  # BatchNorm cannot train on a batch of one
        steps = n // batch_size if drop_last else math.ceil(n / batch_size)
        optimizer = make_optimizer(self.model, self.s, phase["lr"])
        scheduler = make_scheduler(optimizer, self.s, phase["epochs"], steps)
        if state:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        log(f"phase: train {phase['trainable']} for epochs {first}-{last} at lr {phase['lr']:g} "
            f"({trainable:,} trainable parameters{', on cached features' if on_features else ''})")
        trained = self.model
        if on_features:
            encoder, trained = split
            views = self.s["cached_views"] if self.s["augment"] else 1
            started = time.perf_counter()
            train_feats, val_feats = cached_features(encoder, self.data, self.s, views, self.device, self.amp,
                                                     self.fmt)
            self.result.train_seconds += time.perf_counter() - started
            log(f"frozen part's outputs for {n} train images x {views} views and {len(self.data.val_labels)} "
                f"val images computed once ({time.perf_counter() - started:.1f} s)")
        stepper = Stepper(trained, self.criterion, optimizer, scheduler, self.device, self.amp)
        loader = None if on_features else self.image_loader(drop_last)
        eval_batch = inference_batch(self.device)
        for epoch in range(max(first, done + 1), last + 1):
            started = time.perf_counter()
            generator = seed_epoch(self.s["seed"], epoch)
            lr = optimizer.param_groups[0]["lr"]
            if on_features:
                x_all = train_feats[(epoch - first) % len(train_feats)]
                train_loss, train_acc = self.train_on_features(stepper, x_all, generator, drop_last)
                val_batches = ((val_feats[i:i + eval_batch], self.val_labels[i:i + eval_batch])
                               for i in range(0, len(val_feats), eval_batch))
            else:
                train_loss, train_acc = self.train_on_images(stepper, loader, epoch)
                val_batches = normalized_batches(self.val_stack, self.val_labels, self.data.preprocess, eval_batch)
            val_loss, val_acc = evaluate_batches(trained, val_batches, self.criterion, self.device, self.amp,
                                                 self.fmt)
            seconds = time.perf_counter() - started
            self.record(epoch, phase, train_loss, train_acc, val_loss, val_acc, lr, seconds)
            self.save_state(epoch, optimizer, scheduler)
            # Logged once saved: an epoch the log calls finished survives any interruption.
            log(f"epoch {epoch:3d} [{phase['trainable']}] train loss {train_loss:.4f} acc {train_acc:.4f} | "
                f"val loss {val_loss:.4f} acc {val_acc:.4f} | lr {lr:.2e} | {seconds:.1f} s")

    def train_on_features(self, stepper: Stepper, feats: torch.Tensor, generator, drop_last: bool):
        train_mode(stepper.module, self.s["keep_bn_stats"])
        order = torch.randperm(len(feats), generator=generator)
        if drop_last:
            order = order[:len(order) - 1]
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), self.s["batch_size"]):
            idx = order[i:i + self.s["batch_size"]]
            loss, right = stepper.train_batch(feats[idx], self.train_labels[idx].to(self.device))
            loss_sum, correct = loss_sum + loss, correct + right
        return loss_sum / len(order), correct / len(order)

    def image_loader(self, drop_last: bool) -> torch.utils.data.DataLoader:
        """One loader for every epoch of a phase: its workers start once, not once per epoch (on a
        16-core GPU machine with 8 workers: 0.13 s per pass over the training images, not 0.26 s)."""
        dataset = TensorImages(self.data.train_images, self.data.train_labels,
                               train_transform(self.data.preprocess, self.s["augment"]))
        workers = worker_count(self.s["workers"], self.device)
        # The loader's own generator: drawing its worker seeds must not move the global random
        # stream (dropout), or a resumed run would differ from an uninterrupted one.
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.s["batch_size"], sampler=EpochSampler(len(dataset), self.s["seed"]),
            drop_last=drop_last, num_workers=workers, pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(self.s["seed"]))

    def train_on_images(self, stepper: Stepper, loader, epoch: int):
        loader.sampler.set_epoch(epoch)
        train_mode(self.model, self.s["keep_bn_stats"])
        loss_sum, correct, count = 0.0, 0, 0
        for x, y in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None):
            loss, right = stepper.train_batch(to_device(x, self.device, self.fmt),
                                              y.to(self.device, non_blocking=True))
            loss_sum, correct, count = loss_sum + loss, correct + right, count + len(y)
        return loss_sum / count, correct / count

    def record(self, epoch, phase, train_loss, train_acc, val_loss, val_acc, lr, seconds) -> None:
        r = self.result
        r.train_seconds += seconds
        r.history.append({"epoch": epoch, "trainable": phase["trainable"], "train_loss": train_loss,
                          "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                          "seconds": seconds})
        if val_acc > r.best_accuracy or (val_acc == r.best_accuracy and val_loss < r.best_loss):
            r.best_accuracy, r.best_loss, r.best_epoch = val_acc, val_loss, epoch
            r.best_state = copy.deepcopy({k: v.cpu() for k, v in self.model.state_dict().items()})
