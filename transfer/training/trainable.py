"""What trains in a phase: which parameters of a TransferNet learn (`trainable`: head, top or all),
the frozen prefix whose outputs can be cached, and BatchNorm's statistics while the rest trains."""
from __future__ import annotations

import torch
from torch import nn

from transfer.core.errors import UserError
from transfer.core.settings import Phase
from transfer.models.backbones import TransferNet, body_blocks

# Fewer blocks than this, and `partial` cannot train "the top of the body" without training nearly all of it.
MIN_PARTIAL_BLOCKS = 4


def check_top_blocks(model: TransferNet, arch: str, phases: tuple[Phase, ...], key: str) -> None:
    """`trainable: top` needs a body of at least MIN_PARTIAL_BLOCKS blocks, and leaves at least one
    of them frozen: never the whole body trained under the name of partial."""
    count = len(body_blocks(model))
    for phase in phases:
        if phase.trainable != "top":
            continue
        if count < MIN_PARTIAL_BLOCKS:
            raise UserError(f"{key}: trainable top needs a body of at least {MIN_PARTIAL_BLOCKS} blocks, but "
                            f"model.arch {arch} splits into {count}; use trainable: head or all")
        if phase.top_blocks >= count:
            raise UserError(f"{key}: top_blocks {phase.top_blocks} would train the whole body of {arch} "
                            f"({count} blocks, the stem included); use at most {count - 1}, or trainable: all")


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
    if trainable == "top" and type(body).__name__ == "EfficientNet" and hasattr(body, "conv_stem"):  # timm's
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
