"""Experiment: does torch.compile speed up the finetune training step on a CPU?

    python bench/experiments/compile_cpu.py eager
    python bench/experiments/compile_cpu.py compile

One EfficientNet-Lite0 step on 16 random 224 px images in channels-last, as finetune trains (every
weight, BatchNorm statistics kept); prints the first step's seconds (compilation included) and the
mean of 8 later steps per image. On the 2-core AMD EPYC (2026-11-23): eager 60.8 ms an image;
compiled 102.8 ms an image after 86.6 s of compiling. So the pipeline does not compile."""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from transfer.models.backbones import build_model, set_trainable, train_mode  # noqa: E402

mode = sys.argv[1] if len(sys.argv) > 1 else "eager"
torch.manual_seed(0)
model, _ = build_model("efficientnet_lite0", 2, True)
model.to(memory_format=torch.channels_last)
set_trainable(model, "all")
train_mode(model, True)
optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
x = torch.randn(16, 3, 224, 224).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 2, (16,))
forward = torch.compile(model) if mode == "compile" else model


def step():
    loss = criterion(forward(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


started = time.perf_counter()
step()
print(mode, "first step s", round(time.perf_counter() - started, 1), flush=True)
step()
started = time.perf_counter()
for _ in range(8):
    step()
print(mode, "ms an image", round((time.perf_counter() - started) / 8 / 16 * 1000, 1))
