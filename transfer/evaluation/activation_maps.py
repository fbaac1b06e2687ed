"""Class activation maps: where in an image a CNN found the evidence for the class it predicted
(Grad-CAM, from torchcam), drawn over the misclassified images so that a reader sees why each was wrong.

The layer is found automatically: the last one whose output is still a feature map with a spatial
extent (torchcam's locate_candidate_layer), i.e. the last convolutional block before the global pool.
A transformer has no such map at its end: it is recognised by the token sequences it computes (a
linear layer whose output is batch x tokens x channels), and, like a network without any feature
map, gets no maps, with one line saying why (NoMaps)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class NoMaps(Exception):
    """Why a network gets no class activation maps, in one line."""


def token_layers(model: nn.Module, image_size: int) -> list[str]:
    """The linear layers that map token sequences (a 3-D output) in one forward pass of a blank image."""
    found: list[str] = []
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: found.append(name) if out.dim() == 3 else None)
             for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return found


def map_layer(model: nn.Module, image_size: int) -> str:
    """The name of the last convolutional block of a CNN; NoMaps for any other network."""
    from torchcam.methods._utils import locate_candidate_layer

    tokens = token_layers(model, image_size)
    if tokens:
        raise NoMaps(f"a transformer (its layer {tokens[0]} maps token sequences), not a CNN: "
                     "Grad-CAM needs a last convolutional feature map")
    layer = locate_candidate_layer(model, (3, image_size, image_size))
    if not layer:
        raise NoMaps("no layer of the network gives a feature map with a spatial extent (no convolutional block)")
    return layer


def activation_maps(model: nn.Module, batch: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM of `classes` (one per image) on the normalised `batch`: [images, height, width] in 0-1,
    at the images' size. Gradients are computed here, float32, on the model's device: only for the
    few images a grid shows."""
    from torchcam.methods import GradCAM

    # A copy: evaluate's pass in inference mode may have re-laid the weights as inference tensors
    # (channels_last), which autograd cannot use; a deep copy holds ordinary ones, and the hooks stay off it.
    model = copy.deepcopy(model).eval()
    size = batch.shape[-1]
    layer = map_layer(model, size)
    device = next(model.parameters()).device
    x = batch.float().to(device).requires_grad_(True)  # a graph even where the weights are frozen
    with torch.enable_grad(), GradCAM(model, target_layer=layer, input_shape=(3, size, size)) as extractor:
        scores = model(x).float()
        maps = extractor(class_idx=list(classes), scores=scores)[0].detach()
    maps = nn.functional.interpolate(maps.unsqueeze(1).float(), size=batch.shape[-2:], mode="bilinear",
                                     align_corners=False).squeeze(1)
    return maps.nan_to_num(0.0).clamp(0, 1).cpu()
