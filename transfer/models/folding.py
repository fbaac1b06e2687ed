"""BatchNorm folded into the convolution before it while it runs on its running statistics."""
from __future__ import annotations

import types

import torch
from torch import nn


def _uses_running_stats(bn: nn.Module) -> bool:
    return not bn.training and bn.running_var is not None


def _conv_with(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`conv`'s own forward with another weight and bias (plain nn.Conv2d, or timm's TF-"same" Conv2dSame)."""
    if type(conv) is nn.Conv2d:
        return conv._conv_forward(x, weight, bias)
    from timm.layers import conv2d_same

    return conv2d_same(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_folded_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    bn = conv.__dict__["folded_batchnorm"]
    if not _uses_running_stats(bn):
        return _conv_with(conv, x, conv.weight, conv.bias)
    # BatchNorm on running statistics is y = x * scale + shift per channel: fold it into the conv.
    scale = torch.rsqrt(bn.running_var + bn.eps)
    scale = scale * bn.weight if bn.weight is not None else scale
    shift = -bn.running_mean * scale
    shift = shift + bn.bias if bn.bias is not None else shift
    shift = shift + conv.bias * scale if conv.bias is not None else shift
    return _conv_with(conv, x, conv.weight * scale.view(-1, 1, 1, 1), shift)


def _batchnorm_folded_forward(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if not _uses_running_stats(bn):
        return type(bn).forward(bn, x)
    # The conv before it already applied the normalisation; what is left is timm's fused activation.
    return bn.act(bn.drop(x)) if hasattr(bn, "act") else x


def _foldable_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d or (type(m).__name__ == "Conv2dSame" and type(m).__module__.startswith("timm."))


def _foldable_batchnorm(m: nn.Module) -> bool:
    timm_with_act = type(m).__name__ == "BatchNormAct2d" and type(m).__module__.startswith("timm.")
    return type(m) is nn.BatchNorm2d or timm_with_act


def fold_batchnorm(model: nn.Module, image_size: int) -> int:
    """Let each BatchNorm that directly follows a convolution fold into it while it uses its running
    statistics (eval mode; in training with keep_bn_stats): the conv then runs with weight * scale and
    a bias, and the BatchNorm's own pass over the activations, forward and backward, is skipped.

    The same parameters train and receive the same gradients (autograd goes through the folding), the
    state dict keeps its keys, and a BatchNorm in train mode still normalises by its batch as before.

    Pairs are found by running the model once (a BatchNorm whose input is a conv's output); then, with
    random running statistics so that a wrong pairing shows, the folded model's output is checked
    against the original's, and if they differ nothing is folded. Returns the number of pairs folded."""
    was_training = {m: m.training for m in model.modules()}
    random = torch.Generator().manual_seed(0)  # not the global stream: a resumed run must not differ
    x = torch.randn(2, 3, image_size, image_size, generator=random).to(next(model.parameters()).device)
    model.eval()
    pairs = conv_batchnorm_pairs(model, x)
    if pairs and not fold_checked(model, pairs, x, random):
        pairs = []
    for m, training in was_training.items():
        m.training = training
    return len(pairs)


def conv_batchnorm_pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, BatchNorm) pairs where the BatchNorm's input is the conv's output, found in one forward pass."""
    conv_outputs = {}
    pairs = []

    def after_conv(conv, _inputs, out):
        conv_outputs[id(out)] = (conv, out)  # the tensor is kept, so its id is not reused in this pass

    def after_batchnorm(bn, inputs, _out):
        conv, _ = conv_outputs.get(id(inputs[0]), (None, None))
        if conv is not None and conv.out_channels == bn.num_features and bn.running_var is not None:
            pairs.append((conv, bn))

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if _foldable_conv(m)]
    hooks += [m.register_forward_hook(after_batchnorm) for m in model.modules() if _foldable_batchnorm(m)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return pairs


def fold_checked(model: nn.Module, pairs, x: torch.Tensor, random: torch.Generator) -> bool:
    """Fold the pairs, and unfold them again unless the model computes what it did before."""
    saved = [(bn.running_mean.clone(), bn.running_var.clone()) for _, bn in pairs]
    with torch.no_grad():
        for _, bn in pairs:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=random))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=random) * 2 + 0.1)
        expected = model(x)
        for conv, bn in pairs:
            # Plain attributes via __dict__: a module set as an attribute would become a submodule (and
            # a state-dict key); a bound method survives deepcopy, bound to the copy.
            conv.__dict__["folded_batchnorm"] = bn
            conv.forward = types.MethodType(_conv_folded_forward, conv)
            bn.forward = types.MethodType(_batchnorm_folded_forward, bn)
        folded = model(x)
        for (_, bn), (mean, var) in zip(pairs, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
    if torch.allclose(folded, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())):
        return True
    for conv, bn in pairs:  # a conv output used elsewhere too, or an unexpected forward: leave as it was
        del conv.__dict__["folded_batchnorm"], conv.forward, bn.forward
    return False
