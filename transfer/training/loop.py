"""The one training loop every transfer mode runs.

A mode is data (transfer.core.settings.mode_settings): a list of phases, each saying what trains, at what
rate, on what batches and for how long. `fit` runs the phases in order; each epoch of a phase trains
on its source's batches (transfer.training.sources), validates, keeps the best weights and saves the state.

Every epoch is seeded from (seed, epoch), and the state after each epoch is saved aside, so a killed
run resumes at its last finished epoch and ends exactly where an uninterrupted run would."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from transfer.core.devices import bf16_inference, memory_format, uses_bf16
from transfer.core.files import atomic_path
from transfer.core.settings import ModeSettings, Phase
from transfer.core.stage import log
from transfer.data.images import TrainData
from transfer.models.backbones import TransferNet
from transfer.models.checkpoints import check_archive
from transfer.models.folding import fold_batchnorm
from transfer.training.distributed import OneProcess, own_totals
from transfer.training.losses import make_criterion
from transfer.training.optim import make_optimizer, make_scheduler
from transfer.training.phase_run import PhaseRun, epoch_seed
from transfer.training.sharding import shard
from transfer.training.sources import make_source
from transfer.training.stopping import beats_kept
from transfer.training.stopping import update as early_stop
from transfer.training.trainable import set_trainable, train_mode


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int = 0
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    train_seconds: float = 0.0
    trainable_params: int = 0
    stop_best: float | None = None  # early stopping's count (transfer.training.stopping), carried by the resume state
    stale_epochs: int = 0
    stopped_epoch: int | None = None


class ResumeState:
    """The state after the last finished epoch, saved aside as plain data and tensors (it loads with
    weights_only=True: no code runs from it). It counts only when it was made by the same settings,
    data and code (`fingerprint`)."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:  # mapped, and judged on its sizes first: a foreign file's tensors are never read
            check_archive(self.path)
            state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - a damaged or foreign state file only costs the resume
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None
        return state

    def save(self, epoch: int, model: nn.Module, optimizer, scheduler, result: FitResult) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, "epoch": epoch, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "result": asdict(result)}, tmp)


class SharedResume(ResumeState):
    """The resumable state as the processes besides rank 0 see it: they resume from it; rank 0 alone saves it."""

    def save(self, *args) -> None:
        pass


class Stepper:
    """One optimisation step per batch of any source on the module it trains; with `clip_grad_norm`,
    the gradient of all its trainable parameters together is scaled down to at most that norm."""

    def __init__(self, module: nn.Module, criterion, optimizer, scheduler, device, amp: bool,
                 clip_grad_norm: float | None = None):
        self.module = module
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.amp = amp
        self.clip_grad_norm = clip_grad_norm
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def forward(self, x):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.module(x).float()

    def train_batch(self, x, y) -> tuple[float, int]:
        logits = self.forward(x)
        loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters, self.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item() * len(y), (logits.argmax(1) == y).sum().item()


def train_one_epoch(stepper: Stepper, batches, epoch: int, totals=own_totals) -> tuple[float, float]:
    """Mean loss and accuracy over the epoch's training batches (`totals`: summed over processes)."""
    loss_sum = 0.0
    correct = 0
    count = 0
    for x, y in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=None):
        loss, right = stepper.train_batch(x, y)
        loss_sum = loss_sum + loss
        correct = correct + right
        count = count + len(y)
    loss_sum, correct, count = totals(loss_sum, correct, count)
    return loss_sum / count, correct / count


@torch.inference_mode()
def evaluate_batches(module: nn.Module, batches, criterion, device, amp: bool,
                     totals=own_totals) -> tuple[float, float]:
    """Mean loss and accuracy of `module` (eval mode) over (x, y) batches already on the device."""
    module.eval()
    loss_sum = 0.0
    correct = 0
    count = 0
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = module(x).float()
        loss_sum += criterion(logits, y).item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    loss_sum, correct, count = totals(loss_sum, correct, count)
    return loss_sum / count, correct / count


def phase_epochs(phases: tuple[Phase, ...]) -> list[tuple[Phase, int, int]]:
    """Each phase with its first and last epoch, counted over the whole run."""
    spans = []
    first = 1
    for phase in phases:
        spans.append((phase, first, first + phase.epochs - 1))
        first += phase.epochs
    return spans


def fit(model: TransferNet, data: TrainData, settings: ModeSettings, device: torch.device, resume: ResumeState,
        on_epoch: Callable[[dict], None] | None = None, strategy: OneProcess | None = None) -> FitResult:
    """Run the mode's phases, resuming after the last finished epoch of an interrupted run.

    `on_epoch(row)` hears of every epoch of the run once it is saved: first those a resumed run
    restored, then each new one as it ends (live logs)."""
    state = resume.load()
    result = FitResult()
    done = 0
    if state:
        done = state["epoch"]
        result = FitResult(**state["result"])
        model.load_state_dict(state["model"])
        log(f"resuming after epoch {done} (state in {resume.path})")

    last_phase_first = phase_epochs(settings.phases)[-1][1]

    def finished(row: dict, optimizer, scheduler) -> bool:
        """Record and save the epoch; whether the run stops after it."""
        record(result, model, row)
        stop = row["epoch"] >= last_phase_first and early_stop(result, row, settings.patience, settings.stop_on)
        resume.save(row["epoch"], model, optimizer, scheduler, result)
        if on_epoch:
            on_epoch(row)
        return stop

    for row in result.history if on_epoch else ():
        on_epoch(row)
    fmt = memory_format(device, settings.batch_size)
    model.to(device).to(memory_format=fmt)
    folded = fold_batchnorm(model, data.preprocess["image_size"])
    log(f"{folded} BatchNorm layers fold into the convolution before them while on running statistics")
    for phase, first, last in phase_epochs(settings.phases):
        if done < last and result.stopped_epoch is None:
            inference_amp = bf16_inference(device, phase.inference_dtype)
            run = PhaseRun(data, phase, device, fmt, uses_bf16(device), inference_amp, strategy or OneProcess(device))
            run_phase(model, run, (first, last), result, done, state if first <= done else None, finished)
    return result


def run_phase(model: TransferNet, run: PhaseRun, span: tuple[int, int], result: FitResult, done: int,
              state: dict | None, finished: Callable[[dict, object, object], bool]) -> None:
    """The plain epoch loop of one phase: train an epoch, validate, keep the best, save the state."""
    phase = run.phase
    first, last = span
    set_trainable(model, phase.trainable, phase.top_blocks)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.trainable_params = max(result.trainable_params, trainable)
    source = shard(make_source(model, run, first), run.strategy)
    result.train_seconds += source.setup_seconds
    optimizer = make_optimizer(model, phase)
    scheduler = make_scheduler(optimizer, phase, phase.epochs, source.steps_per_epoch)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    log(f"phase: train {phase.trainable} for epochs {first}-{last} at lr {phase.lr:g} "
        f"({trainable:,} trainable parameters, {source.description})")
    criterion = make_criterion(phase, run.data.train_labels, model.head.out_features, run.device)
    stepper = Stepper(run.strategy.wrap(source.module, phase), run.strategy.criterion(criterion), optimizer,
                      scheduler, run.device, run.amp, phase.clip_grad_norm)
    for epoch in range(max(first, done + 1), last + 1):
        started = time.perf_counter()
        torch.manual_seed(epoch_seed(phase.seed, epoch))  # dropout draws from the global stream
        lr = optimizer.param_groups[0]["lr"]
        train_mode(source.module, phase.keep_bn_stats)
        train_loss, train_acc = train_one_epoch(stepper, source.train_batches(epoch), epoch, run.strategy.totals)
        val_loss, val_acc = evaluate_batches(source.module, source.val_batches(), criterion, run.device, run.amp,
                                             run.strategy.totals)
        row = {"epoch": epoch, "trainable": phase.trainable, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - started}
        stop = finished(row, optimizer, scheduler)
        # Logged once saved: an epoch the log calls finished survives any interruption.
        log(f"epoch {epoch:3d} [{phase.trainable}] train loss {train_loss:.4f} acc {train_acc:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f} | lr {lr:.2e} | {row['seconds']:.1f} s")
        if stop:
            log(f"early stopping after epoch {epoch}: no better {phase.stop_on} in {phase.patience} epochs")
            break


def record(result: FitResult, model: nn.Module, row: dict) -> None:
    """Add an epoch to the history; keep its weights if it is the best so far (accuracy, then loss)."""
    result.train_seconds += row["seconds"]
    result.history.append(row)
    acc = row["val_acc"]
    loss = row["val_loss"]
    if beats_kept(acc, loss, result.best_accuracy, result.best_loss):
        result.best_accuracy = acc
        result.best_loss = loss
        result.best_epoch = row["epoch"]
        result.best_state = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
