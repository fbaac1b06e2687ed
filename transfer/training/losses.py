"""The training loss of a phase: cross-entropy, with label smoothing and optional class weights."""
from __future__ import annotations

import torch
from torch import nn

from transfer.core.settings import Phase


def balanced_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's 'balanced' class weights from the train counts: n / (classes x count of the class),
    so that every class weighs as much in the loss as if the classes were equally frequent."""
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp_min(1))).float()  # a class without images: never used


def make_criterion(phase: Phase, train_labels: list[int], num_classes: int, device: torch.device) -> nn.Module:
    weight = balanced_weights(train_labels, num_classes).to(device) if phase.class_weights == "balanced" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=phase.label_smoothing)
