"""`model.arch: timm/<name>`: any timm model by name, its preprocessing from its own pretrained config,
and its body split into blocks by timm's own grouping of the model into stages (`group_matcher`).

Pretrained weights come from the Hugging Face hub, as timm gets them, or from a file at
`$TORCH_HOME/hub/checkpoints/timm/<name>.safetensors` (or `.pth`), which is used first: the place to
copy them to on a machine without internet access."""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

import torch
from torch import nn

from transfer.core.errors import UserError, first_line, shown

PREFIX = "timm/"
WEIGHT_SUFFIXES = (".safetensors", ".pth")
SHOWN_TAGS = 8  # of a timm model's pretrained tags, in the message for one it lacks


def is_timm(arch: str) -> bool:
    return arch.startswith(PREFIX)


def model_name(arch: str) -> str:
    """The timm name of `timm/<name>` or `timm/<name>.<pretrained tag>`, checked to exist with that tag;
    one line with close names (or the model's tags) if it does not."""
    import timm

    name = arch[len(PREFIX):]
    if not timm.is_model(name):  # it looks at the name only: a tag is checked below
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        hint = f"close names: {', '.join(close)}" if close else "timm.list_models() lists them"
        raise UserError(f"model.arch: unknown timm model {shown(name)} ({hint})")
    architecture, tag = timm.models.split_model_name_tag(name)
    if "." in name:
        try:
            known_tag = timm.models.get_pretrained_cfg(name) is not None
        except RuntimeError:  # timm's answer to a tag the architecture has no weights under
            known_tag = False
        if not known_tag:
            tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{architecture}.*")]
            listed = ", ".join(tags[:SHOWN_TAGS]) + (", ..." if len(tags) > SHOWN_TAGS else "")
            hint = f"its tags: {listed}" if tags else "it has no pretrained weights"
            raise UserError(f"model.arch: timm model {architecture} has no pretrained tag {shown(tag)} ({hint})")
    return name


def input_sizes(arch: str) -> tuple[int, int | None]:
    """(the pretrained config's input size, that size again where it is the only one the model takes:
    ViTs' position embeddings fix it)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name(arch))
    size = cfg.input_size[-1] if cfg else 224
    return size, size if cfg is not None and cfg.fixed_input_size else None


def local_weights(name: str) -> Path | None:
    folder = Path(torch.hub.get_dir()) / "checkpoints" / "timm"
    return next((folder / f"{name}{s}" for s in WEIGHT_SUFFIXES if (folder / f"{name}{s}").is_file()), None)


def create(arch: str, pretrained: bool) -> tuple[nn.Module, dict]:
    """The timm model without its classifier (it returns pooled features) and its preprocessing."""
    import timm
    from timm.data import resolve_data_config

    name = model_name(arch)
    local = local_weights(name) if pretrained else None
    overlay = {"file": str(local)} if local else None
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay)
    except Exception as err:  # noqa: BLE001 - hub errors are OSErrors; a damaged file a SafetensorError, ...
        if local is None and not isinstance(err, (OSError, RuntimeError, ValueError)):
            raise
        cfg = timm.models.get_pretrained_cfg(name)
        source = (f"model.safetensors (from https://huggingface.co/{getattr(cfg, 'hf_hub_id', None) or f'timm/{name}'}"
                  "/resolve/main/model.safetensors)")
        if local is not None:  # the user's file is there but does not load: say so, not "cannot download"
            raise UserError(f"model.arch {arch}: {local} does not load as its weights ({type(err).__name__}: "
                            f"{first_line(err)}); replace it with {source}") from None
        target = Path(torch.hub.get_dir()) / "checkpoints" / "timm" / f"{name}.safetensors"
        raise UserError(f"model.arch {arch}: cannot get its ImageNet weights ({type(err).__name__}); offline, put "
                        f"{source} at {target}") from None
    cfg = resolve_data_config({}, model=net)
    size = cfg["input_size"][-1]
    preprocess = {"image_size": size, "resize_size": int(math.floor(size / cfg["crop_pct"])),
                  "mean": list(cfg["mean"]), "std": list(cfg["std"]), "interpolation": cfg["interpolation"]}
    # What forward returns once the classifier is gone: after a head conv (MobileNetV3) or norm, if any.
    num_features = getattr(net, "head_hidden_size", None) or net.num_features
    return net, preprocess | {"num_features": num_features}


class RootParameters(nn.Module):
    """A module's own parameters without its children's (a ViT's class token and position embedding)
    as a module, so that a block is always a list of modules. It holds references only: it is not
    part of the model."""

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        for name, param in params.items():
            self.register_parameter(name, param)


def _patterns(matcher) -> list[re.Pattern]:
    specs = [spec for spec in matcher.values() if spec is not None]
    flat = [s for spec in specs for s in ([spec] if isinstance(spec, str) else [entry[0] for entry in spec])]
    return [re.compile(s) for s in flat]


def blocks(body: nn.Module) -> list[list[nn.Module]] | None:
    """The body's blocks in timm's coarse grouping (stem, then each stage), input to output; what no
    stage claims (a final norm or head conv) joins the last block. None without a group matcher."""
    from timm.models import group_parameters

    try:
        matcher = body.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return None
    param_group = group_parameters(body, matcher, reverse=True)  # parameter name -> group number
    groups: dict[int, list[nn.Module]] = {}
    for prefix, module in body.named_modules():
        own = {n: p for n, p in module.named_parameters(recurse=False)}
        if not own:
            continue
        group = groups.setdefault(param_group[f"{prefix}.{next(iter(own))}" if prefix else next(iter(own))], [])
        # A leaf module whole (with its buffers: BatchNorm statistics); a parent's own parameters alone
        # (a ViT's class token, a ConvNeXt block's layer scale), since its children are counted apart.
        leaf = not any(True for child in module.children() for _ in child.parameters())
        group.append(module if leaf else RootParameters(own))
    ordered = [groups[k] for k in sorted(groups)]
    last_names = [n for n, g in param_group.items() if g == max(groups)]
    if isinstance(matcher, dict) and len(ordered) > 1 and not any(
            p.match(n) for n in last_names for p in _patterns(matcher)):
        ordered[-2].extend(ordered.pop())  # layers after the last stage count with it
    return ordered
