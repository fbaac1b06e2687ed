"""A phase's optimiser and learning-rate schedule, from its settings."""
from __future__ import annotations

import math

import torch

from transfer.core.settings import Phase
from transfer.models.backbones import TransferNet, body_blocks


def body_groups(model: TransferNet, rate: float, layer_decay: float | None) -> list[dict]:
    """The trainable part of the body at `rate`; with `layer_decay`, block by block (body_blocks:
    timm's own grouping where the model has one), the top block at `rate` and each one below at
    `layer_decay` times the one above it (timm's layer-wise learning-rate decay)."""
    if layer_decay is None:
        params = [p for p in model.body.parameters() if p.requires_grad]
        return [{"params": params, "lr": rate}] if params else []
    blocks = body_blocks(model)
    groups = []
    for depth, block in enumerate(reversed(blocks)):
        params = [p for m in block for p in m.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": rate * layer_decay ** depth})
    return groups


def make_optimizer(model: TransferNet, phase: Phase) -> torch.optim.Optimizer:
    """The head at the phase's `lr`, the trainable part of the body at `lr` x `backbone_lr_scale`
    (decaying block by block below the top one with `layer_decay`)."""
    lr = phase.lr
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    groups += body_groups(model, lr * phase.backbone_lr_scale, phase.layer_decay)
    wd = phase.weight_decay
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=phase.momentum, weight_decay=wd)
    if phase.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


def make_scheduler(optimizer, settings: Phase, epochs: int, steps_per_epoch: int):
    """A per-step schedule over one phase: an optional linear warm-up of `warmup_epochs`, then cosine,
    step (StepLR by epochs), onecycle (which has a warm-up of its own) or none."""
    total = epochs * steps_per_epoch
    kind = settings.scheduler
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    # Warm-up: a new random head's first, large gradients reach the pretrained body at a small rate.
    warm = min(round(settings.warmup_epochs * steps_per_epoch), total - 1)
    if kind == "cosine":
        rest = total - warm
        decay = lambda step: 0.5 * (1 + math.cos(math.pi * min(step - warm, rest) / rest))
    elif kind == "step":
        decay = lambda step: settings.gamma ** (step // (settings.step_size * steps_per_epoch))
    else:
        decay = lambda step: 1.0
    factor = lambda step: (step + 1) / (warm + 1) if step < warm else decay(step)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
