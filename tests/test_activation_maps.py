"""The misclassified-images grid with class activation maps: drawn over the crops for a CNN (random
init, 32 px), and left out with one line for a transformer and for a network without convolutions."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from transfer.data.transforms import working_preprocess
from transfer.evaluation.activation_maps import NoMaps, activation_maps, map_layer
from transfer.evaluation.grids import error_grid
from transfer.models.backbones import build_model
from transfer.models.folding import fold_batchnorm

NAMES = ["ants", "bees"]
SHOWN = 3


def tiny(arch: str):
    torch.manual_seed(0)
    model, preprocess = build_model(arch, len(NAMES), pretrained=False)
    preprocess = working_preprocess(preprocess, 32)
    model.eval()
    fold_batchnorm(model, preprocess["image_size"])  # as evaluate loads it
    return model, preprocess


def misclassified(preprocess: dict):
    """SHOWN uint8 images at the working size, each labelled with the class it is not predicted."""
    generator = torch.Generator().manual_seed(1)
    size = preprocess["resize_size"]
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator) for _ in range(SHOWN)]
    probs = torch.softmax(torch.randn(SHOWN, len(NAMES), generator=generator), 1)
    return images, (1 - probs.argmax(1)).tolist(), probs


def grid_title(fig) -> str:
    return fig._suptitle.get_text()


def test_a_cnn_gets_the_maps_of_its_predicted_class_over_the_crops(capsys):
    model, preprocess = tiny("timm/mobilenetv3_small_050")
    images, labels, probs = misclassified(preprocess)
    with torch.inference_mode():  # evaluate predicts in inference mode before it draws the grid
        model.to(memory_format=torch.channels_last)(torch.zeros(1, 3, 32, 32))
    fig = error_grid(images, labels, probs, NAMES, "frozen", "val", model, preprocess)
    assert grid_title(fig).endswith("; Grad-CAM of the predicted class")
    assert capsys.readouterr().err == ""
    assert map_layer(model, 32).startswith("body.")  # a block of the backbone, not the head
    batch = torch.randn(SHOWN, 3, 32, 32)
    maps = activation_maps(model, batch, [0, 1, 0])
    assert maps.shape == (SHOWN, 32, 32) and 0 <= maps.min() and maps.max() <= 1
    assert maps.flatten(1).std(1).max() > 0  # maps, not constants (at random init a map may be all 0)
    assert not torch.equal(maps, activation_maps(model, batch, [1, 0, 1]))  # of the class asked for


class Mlp(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), nn.ReLU(), nn.Linear(8, len(NAMES)))


@pytest.mark.parametrize("network, why", [("timm/test_vit", "a transformer (its layer "),
                                          ("mlp", "no layer of the network gives a feature map")])
def test_a_network_without_a_last_feature_map_gets_the_plain_grid_and_one_line(network, why, capsys):
    if network == "mlp":
        model, preprocess = Mlp().eval(), tiny("timm/mobilenetv3_small_050")[1]
    else:
        model, preprocess = tiny(network)
    images, labels, probs = misclassified(preprocess)
    fig = error_grid(images, labels, probs, NAMES, "frozen", "val", model, preprocess)
    assert grid_title(fig) == f"frozen: {SHOWN} of {SHOWN} val images misclassified"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"no class activation maps on the misclassified images: {why}")
    with pytest.raises(NoMaps):
        map_layer(model, 32)
