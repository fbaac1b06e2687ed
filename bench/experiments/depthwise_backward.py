"""Experiment: where a finetune step's time goes in EfficientNet-Lite0's depthwise convolutions on a CPU.

    python bench/experiments/depthwise_backward.py

For each depthwise convolution shape of EfficientNet-Lite0 at 224 px (batch 16, channels-last, as
fed to the conv: TF-"same" stride-2 layers get their input padded first), the forward pass, the input
gradient and the weight gradient as torch computes them (oneDNN), and a hand-written weight
gradient: one product and sum per kernel tap. The weight gradients cost several times the forward
pass; the hand-written one only wins on the smallest maps, so the pipeline keeps torch's."""
import time

import torch
import torch.nn.functional as F

SHAPES = [  # (channels, input size, kernel, stride, padding)
    (32, 112, 3, 1, 1), (96, 113, 3, 2, 0), (144, 56, 3, 1, 1), (144, 59, 5, 2, 0), (240, 28, 5, 1, 2),
    (240, 29, 3, 2, 0), (480, 14, 3, 1, 1), (480, 14, 5, 1, 2), (672, 14, 5, 1, 2), (672, 17, 5, 2, 0),
    (1152, 7, 5, 1, 2), (1152, 7, 3, 1, 1)]


def ms(f, n=5) -> float:
    f()
    started = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - started) / n * 1000


def per_tap_weight_grad(x, g, k, s, p):
    xp = F.pad(x, (p, p, p, p))
    out_size = g.shape[-1]
    grad = torch.empty(x.shape[1], k, k)
    for i in range(k):
        for j in range(k):
            window = xp[:, :, i:i + s * (out_size - 1) + 1:s, j:j + s * (out_size - 1) + 1:s]
            grad[:, i, j] = (window * g).sum((0, 2, 3))
    return grad.unsqueeze(1)


def main() -> None:
    torch.manual_seed(0)
    print(f"# {torch.get_num_threads()} threads, batch 16, channels-last; ms per call")
    print(f"{'channels':>8} {'size':>5} {'kernel':>6} {'stride':>6} {'forward':>8} {'input grad':>11} "
          f"{'weight grad':>12} {'per-tap weight grad':>20}")
    for shape in SHAPES:
        print(row(*shape), flush=True)


def row(c: int, size: int, k: int, s: int, p: int) -> str:
    x = torch.randn(16, c, size, size).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(F.conv2d(x, w, None, s, p, 1, c))

    def grads(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], c, mask)

    assert torch.allclose(per_tap_weight_grad(x, g, k, s, p), grads([False, True, False])[1], rtol=1e-3, atol=1e-2)
    return (f"{c:>8} {size:>5} {k:>6} {s:>6} {ms(lambda: F.conv2d(x, w, None, s, p, 1, c)):>8.1f} "
            f"{ms(lambda: grads([True, False, False])):>11.1f} {ms(lambda: grads([False, True, False])):>12.1f} "
            f"{ms(lambda: per_tap_weight_grad(x, g, k, s, p), 3):>20.1f}")

if __name__ == "__main__":
    main()
