"""What evaluate measures of each candidate's cost to run (transfer.models.cost.model_cost), on tiny
random-init timm networks on the CPU."""
from __future__ import annotations

import time

import timm
import torch

from transfer.models.cost import LATENCY_RUNS, THREADS, model_cost

SIZE = 32  # px: the tiny test images
BATCH = 16
PAUSE_S = 0.003  # a floor under every forward pass, whatever the machine's speed


class Paused(torch.nn.Module):
    """A network whose every pass takes at least PAUSE_S more: a known share of the time it measures."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        time.sleep(PAUSE_S)
        return self.inner(x)


def test_latency_at_batch_1_and_per_image_at_the_batch_on_one_thread():
    """The median of at least 50 timed passes at batch 1 (one thread on the CPU, torch's own count
    restored after), and per image at the evaluation batch: one pause a pass is one pause at batch 1 but
    a sixteenth of one per image at a batch of 16."""
    torch.set_num_threads(2)
    model = Paused(timm.create_model("test_efficientnet", pretrained=False, num_classes=2))
    cost = model_cost(model, SIZE, torch.device("cpu"), BATCH)
    assert torch.get_num_threads() == 2
    latency = cost["latency_batch_1"]
    assert latency["runs"] == LATENCY_RUNS >= 50 and latency["threads"] == THREADS == 1
    assert latency["median_ms"] >= 1000 * PAUSE_S
    assert cost["ms_per_image_at_batch"] < latency["median_ms"]
    assert (cost["batch"], cost["image_size"], cost["device"], cost["dtype"]) == (BATCH, SIZE, "cpu", "float32")


def test_a_larger_network_measures_slower():
    """Two tiny backbones of different size, timed in turn: the one with far more work at the same
    input (timm's test_resnet, at 8x the side of the other's input) is the slower."""
    small = timm.create_model("test_efficientnet", pretrained=False, num_classes=2)
    large = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    fast = model_cost(small, SIZE, torch.device("cpu"), 2)["latency_batch_1"]["median_ms"]
    slow = model_cost(large, 8 * SIZE, torch.device("cpu"), 2)["latency_batch_1"]["median_ms"]
    assert slow > fast
