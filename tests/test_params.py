"""transfer.core.params: params.yaml is checked whole before any work starts, every problem reported at once,
one line each, naming the key; a typo in a key name is an error, not a silently ignored setting."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from transfer.core import params as params_module
from transfer.core.errors import UserError
from transfer.core.settings import mode_settings
from transfer.models.backbones import check_arch, known_archs

REAL = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
LINE = re.compile(r"params\.yaml: [^:\n]+: .+")  # every reported problem: "params.yaml: <key>: <why>"


DELETE = object()


def variant(**changes) -> dict:
    """A deep copy of the real params.yaml with keys set (train__lr=0: train.lr) or deleted (=DELETE)."""
    params = copy.deepcopy(REAL)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = params
        for key in path:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return params


def without_mode_sizes(params: dict) -> dict:
    """The params with no mode's own image or crop size: so that a backbone's size limits meet train's alone."""
    for row in params["modes"].values():
        row.pop("image_size", None)
        row.get("augment", {}).pop("crop_size", None)
    return params


def check_all(params) -> dict:
    """params.check with the backbone checks, as the stages that build a model run it."""
    return params_module.check(params, check_arch)


def problems(params) -> list[str]:
    """The problem lines check() reports (asserting it reports them in the promised shape)."""
    with pytest.raises(UserError) as err:
        check_all(params)
    lines = str(err.value).splitlines()
    if len(lines) > 1:
        assert lines[0] == f"{len(lines) - 1} problems in params.yaml:"
        lines = lines[1:]
    for line in lines:
        assert LINE.fullmatch(line), f"not a one-line problem naming its key: {line!r}"
    return lines


def test_real_params_are_valid():
    """The shipped params.yaml passes, unchanged, and every mode resolves to complete settings."""
    params = copy.deepcopy(REAL)
    assert params_module.check(params) == REAL
    assert params_module.load(ROOT / "params.yaml") == REAL
    for mode, row in REAL["modes"].items():
        settings = mode_settings(REAL, mode)
        if "phases" in row:
            expected = [(phase["trainable"], phase["epochs"]) for phase in row["phases"]]
        else:
            expected = ([("head", row["head_epochs"])] if row.get("head_epochs") else []) + [
                (row["trainable"], row.get("epochs", REAL["train"]["epochs"]))]
        assert [(phase.trainable, phase.epochs) for phase in settings.phases] == expected


# (change to the real params, the key the problem names, words the problem says)
SINGLE = [
    # int8's calibration images: a whole number of at least one
    ({"export__calibration_images": -1}, "export.calibration_images", "must be >= 0, got -1"),
    ({"export__calibration_images": "64"}, "export.calibration_images", "must be a whole number, got '64'"),
    # the mode export publishes must be a key of `modes`
    ({"mode": "finetuned"}, "mode", f"unknown mode 'finetuned' (known: auto, {', '.join(REAL['modes'])})"),
    # backbones: unknown (with the known ones listed), image size too small or not the one it takes
    ({"model__arch": "resnet19"}, "model.arch", "unknown backbone 'resnet19'"),
    ({"model__arch": "alexnet", "train__image_size": 48}, "train.image_size",
     "48 is too small for model.arch alexnet: its minimum input size is 63 px"),
    ({"model__arch": "inception_v3", "train__image_size": 64}, "train.image_size", "minimum input size is 75 px"),
    ({"model__arch": "vit_b_16", "train__image_size": 256}, "train.image_size", "takes 224 px images only"),
    ({"train__image_size": 16}, "train.image_size", "must be null or a whole number >= 32"),
    ({"modes__partial__image_size": 24}, "modes.partial.image_size", "must be null or a whole number >= 32"),
    ({"modes__finetune__augment__crop_size": 16}, "modes.finetune.augment.crop_size",
     "must be null or a whole number >= 32, got 16"),
    ({"train__augment__crop_size": "160px"}, "train.augment.crop_size", "must be null or a whole number >= 32"),
    ({"model__arch": "vit_b_16", "train__image_size": 224, "train__augment__crop_size": 160}, "train.augment.crop_size",
     "160 does not fit model.arch vit_b_16: it takes 224 px images only"),
    # non-positive learning rate, epochs, batch size: in `train` and in a mode's override
    ({"train__lr": 0}, "train.lr", "must be > 0, got 0"),
    ({"train__lr": -0.01}, "train.lr", "must be > 0, got -0.01"),
    ({"train__lr": float("nan")}, "train.lr", "must be a finite number"),
    ({"train__lr": "1e-3"}, "train.lr", "must be a number, got '1e-3'"),  # YAML reads 1e-3 as a string
    ({"train__epochs": 0}, "train.epochs", "must be >= 1, got 0"),
    ({"train__epochs": 2.5}, "train.epochs", "must be a whole number"),
    ({"train__batch_size": 0}, "train.batch_size", "must be >= 1, got 0"),
    ({"train__batch_size": -32}, "train.batch_size", "must be >= 1, got -32"),
    ({"modes__frozen__lr": -1}, "modes.frozen.lr", "must be > 0"),
    ({"modes__finetune__epochs": 0}, "modes.finetune.epochs", "must be >= 1"),
    ({"modes__scratch__batch_size": 0}, "modes.scratch.batch_size", "must be >= 1"),
    ({"modes__finetune__head_lr": 0}, "modes.finetune.head_lr", "must be > 0"),
    ({"modes__finetune__head_epochs": -1}, "modes.finetune.head_epochs", "must be >= 0"),
    # the split
    ({"data__val_every": 1}, "data.val_every", "must be >= 2, got 1"),
    ({"data__val_every": 0}, "data.val_every", "must be >= 2"),
    ({"data__val_fraction": 0}, "data.val_fraction", "must be > 0, got 0"),
    ({"data__val_fraction": 1}, "data.val_fraction", "must be < 1, got 1"),
    ({"data__val_fraction": 1.5}, "data.val_fraction", "must be < 1"),
    ({"data__val_fraction": -0.2}, "data.val_fraction", "must be > 0"),
    ({"data__test_fraction": 1}, "data.test_fraction", "must be < 1, got 1"),
    ({"data__test_fraction": -0.1}, "data.test_fraction", "must be >= 0"),
    ({"data__test_fraction": 0.7}, "data.test_fraction", "val_fraction + test_fraction must be < 1"),
    ({"data__group_duplicates": "yes"}, "data.group_duplicates", "must be true or false, got 'yes'"),
    # early stopping and class weights
    ({"train__patience": 0}, "train.patience", "must be >= 1, got 0"),
    ({"modes__scratch__patience": 2.5}, "modes.scratch.patience", "must be a whole number"),
    ({"train__stop_on": "val_f1"}, "train.stop_on", "unknown value 'val_f1' (known: val_loss, val_acc)"),
    ({"train__class_weights": "inverse"}, "train.class_weights", "unknown value 'inverse' (known: none, balanced)"),
    # optimiser and scheduler, shared or per mode
    ({"train__optimizer": "adamax"}, "train.optimizer", "unknown value 'adamax' (known: sgd, adam, adamw)"),
    ({"train__scheduler": "linear"}, "train.scheduler", "unknown value 'linear' (known: cosine, step, onecycle, none)"),
    ({"modes__finetune__optimizer": "rmsprop"}, "modes.finetune.optimizer", "unknown value 'rmsprop'"),
    ({"modes__finetune__scheduler": "plateau"}, "modes.finetune.scheduler", "unknown value 'plateau'"),
    ({"train__warmup_epochs": -1}, "train.warmup_epochs", "must be >= 0, got -1"),
    ({"modes__finetune__warmup_epochs": "one"}, "modes.finetune.warmup_epochs", "must be a number, got 'one'"),
    # unknown settings (typos) in a mode row, in the augmentations, in a section, at the top
    ({"modes__frozen__trainabel": "head"}, "modes.frozen.trainabel", "unknown setting (did you mean trainable?"),
    ({"modes__finetune__learning_rate": 0.1}, "modes.finetune.learning_rate", "unknown setting"),
    ({"train__augment__hfilp": 0.5}, "train.augment.hfilp", "unknown setting (did you mean hflip?"),
    ({"data__split_sed": 1}, "data.split_sed", "unknown setting (did you mean split_seed?"),
    ({"datta": {"url": "x"}}, "datta", "unknown setting (did you mean data?"),
    # other values that would fail later, deep in a stage
    ({"train__seed": -1}, "train.seed", "must be >= 0"),
    ({"train__seed": 2**40}, "train.seed", "must be <= 4294967295"),
    ({"train__device": "gpu"}, "train.device", "must be auto, cpu, cuda, cuda:N or mps"),
    ({"modes__scratch__trainable": "head"}, "modes.scratch.trainable", "freezing a randomly initialised backbone"),
    ({"train__keep_bn_stats": True}, "modes.scratch.keep_bn_stats", "no BatchNorm statistics worth keeping"),
    ({"modes__finetune__keep_bn_stats": "yes"}, "modes.finetune.keep_bn_stats", "must be true or false, got 'yes'"),
    # the unsure threshold's target: an accuracy, or null
    ({"export__target_accuracy": 1.5}, "export.target_accuracy", "must be <= 1, got 1.5"),
    ({"export__target_accuracy": 0}, "export.target_accuracy", "must be > 0, got 0"),
    ({"export__target_accuracy": "high"}, "export.target_accuracy", "must be a number, got 'high'"),
    # what "cheapest" means among the tied candidates
    ({"compare__cost": "accuracy"}, "compare.cost", "unknown value 'accuracy' (known: auto, train_seconds, latency_ms"),
]


@pytest.mark.parametrize("changes, key, words", SINGLE, ids=[f"{c[1]}={list(c[0].values())[-1]!r}" for c in SINGLE])
def test_one_bad_value_is_one_line_naming_its_key(changes, key, words):
    """Each kind of bad param the issue lists is caught and reported as one line naming its key."""
    params = variant(**changes)
    if "model__arch" in changes:  # a mode's own image_size could be a second problem with that backbone
        without_mode_sizes(params)
    lines = problems(params)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"params.yaml: {key}: "), lines
    assert words in lines[0], lines


def test_unknown_backbone_lists_the_known_ones():
    """An unknown backbone's line lists the backbones there are (and suggests the closest)."""
    (line,) = problems(variant(model__arch="efficientnet_lit0"))
    assert "did you mean efficientnet_lite0?" in line
    for known in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50",
                  "mobilenet_v3_large", "convnext_tiny"):
        assert known in line


def test_typo_in_a_required_key_is_caught_not_defaulted():
    """A misspelt required key is two problems: the unknown spelling, and the real key missing."""
    params = variant(train__batch_size=DELETE)
    params["train"]["bacth_size"] = 8
    lines = problems(params)
    assert any(line.startswith("params.yaml: train.bacth_size: unknown setting (did you mean batch_size?")
               for line in lines), lines
    assert "params.yaml: train.batch_size: missing" in lines, lines
    assert len(lines) == 2


@pytest.mark.parametrize("name", ["fine tune", "frozen.v2", "a/b", "model", "data"])
def test_mode_name_must_name_files_and_stages(name):
    """A mode name that could not be a file name or DVC stage key (spaces, slashes, dots), or that is the
    name of one of the pipeline's own files (models/model.pt, metrics/data.json), is refused."""
    params = variant()
    params["modes"][name] = params["modes"].pop("finetune")
    (line,) = problems(params)
    assert line.startswith(f"params.yaml: modes.{name}: a mode name must be")


GRADUAL = {"pretrained": True, "phases": [
    {"trainable": "head", "epochs": 2, "lr": 0.01, "batch_size": 8},
    {"trainable": "top", "top_blocks": 2, "epochs": 1, "lr": 0.003},
    {"trainable": "all", "epochs": 3, "lr": 0.001, "keep_bn_stats": True, "augment": {"crop_size": 160}}]}


def test_a_row_of_phases_resolves_to_complete_phases():
    """phases: each phase is the mode's settings with its own set over them; the mode's own settings
    (here batch 16) are the default of every phase."""
    params = variant(modes__gradual={**copy.deepcopy(GRADUAL), "batch_size": 16})
    check_all(params)
    settings = mode_settings(params, "gradual")
    phases = settings.phases
    assert [(p.trainable, p.epochs, p.lr, p.batch_size) for p in phases] == [
        ("head", 2, 0.01, 8), ("top", 1, 0.003, 16), ("all", 3, 0.001, 16)]
    assert [p.top_blocks for p in phases] == [0, 2, 0]
    assert [p.keep_bn_stats for p in phases] == [False, False, True]
    assert [p.augment.crop_size for p in phases] == [None, None, 160]
    assert list(phases[2].augment.crop_scale) == REAL["train"]["augment"]["crop_scale"]  # merged, not replaced
    assert settings.epochs == 6 and settings.trainable == "all"


def test_the_shorthand_is_the_same_as_its_phases():
    """head_epochs/head_lr are shorthand: the row written out as phases resolves to the same phases."""
    params = variant()
    row = {"pretrained": True, "trainable": "all", "head_epochs": 3, "head_lr": 0.01, "epochs": 6, "lr": 0.003,
           "batch_size": 16, "keep_bn_stats": True}
    params["modes"]["short"] = row
    params["modes"]["written_out"] = {
        **{k: v for k, v in row.items() if k not in ("trainable", "head_epochs", "head_lr", "epochs")},
        "phases": [{"trainable": "head", "epochs": row["head_epochs"], "lr": row["head_lr"]},
                   {"trainable": "all", "epochs": row["epochs"], "lr": row["lr"]}]}
    check_all(params)
    assert mode_settings(params, "short").phases == mode_settings(params, "written_out").phases


@pytest.mark.parametrize("change, key, words", [
    (lambda row: row.update(head_epochs=1), "modes.gradual.head_epochs", "set it in each of the row's phases"),
    (lambda row: row.update(trainable="all"), "modes.gradual.trainable", "set it in each of the row's phases"),
    (lambda row: row.update(phases=[]), "modes.gradual.phases", "must be a list of phases"),
    (lambda row: row["phases"][1].pop("top_blocks"), "modes.gradual.phases[1].top_blocks", "missing"),
    (lambda row: row["phases"][0].pop("epochs"), "modes.gradual.phases[0].epochs", "missing"),
    (lambda row: row["phases"][0].update(seed=3), "modes.gradual.phases[0].seed", "unknown setting"),
    (lambda row: row["phases"][1].update(patience=3), "modes.gradual.phases[1].patience", "unknown setting"),
    (lambda row: row["phases"][2].update(lr=0), "modes.gradual.phases[2].lr", "must be > 0"),
    (lambda row: row["phases"][2].update(trainable="body"), "modes.gradual.phases[2].trainable", "unknown value"),
    (lambda row: row.update(pretrained=False), "modes.gradual.phases[0].trainable", "freezing a randomly"),
])
def test_a_bad_phase_is_one_line_naming_it(change, key, words):
    row = copy.deepcopy(GRADUAL)
    change(row)
    lines = problems(variant(modes__gradual=row))
    assert any(line.startswith(f"params.yaml: {key}: ") and words in line for line in lines), lines


def test_every_problem_is_reported_at_once():
    """Many bad params: all of them are reported in one error, one line each."""
    params = variant(mode="fine_tune", model__arch="resnet", train__lr=0, train__epochs=-1, train__batch_size=0,
                     data__val_every=1, data__val_fraction=1.0, train__optimizer="sgdm", train__scheduler="cos",
                     modes__frozen__pretrain=True, modes__finetune__lr=-0.5)
    lines = problems(params)
    keys = [line.split(": ")[1] for line in lines]
    assert sorted(keys) == sorted(["mode", "model.arch", "train.lr", "train.epochs", "train.batch_size",
                                   "data.val_every", "data.val_fraction", "train.optimizer", "train.scheduler",
                                   "modes.frozen.pretrain", "modes.finetune.lr"]), lines


def test_image_size_checked_against_the_backbone_in_every_mode():
    """An image size set in a mode row is checked against the backbone too, and null always fits."""
    params = without_mode_sizes(variant(model__arch="alexnet", train__image_size=None))
    check_all(params)
    params["modes"]["frozen"]["image_size"] = 32
    params["modes"]["partial"]["image_size"] = 64
    (line,) = problems(params)
    assert line.startswith("params.yaml: modes.frozen.image_size: 32 is too small for model.arch alexnet")
    check_all(without_mode_sizes(variant(model__arch="vit_b_16", train__image_size=224)))


@pytest.mark.parametrize("text, words", [
    ("", "must be a mapping"),
    ("- just\n- a list\n", "must be a mapping"),
    ("train: {lr: 0.1\n", "not valid YAML"),
])
def test_load_reports_unreadable_files_in_one_line(tmp_path, text, words):
    """An empty, non-mapping or malformed params.yaml is one line, not a traceback or a pile of 'missing'."""
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        params_module.load(path)
    assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="missing"):
        params_module.load(tmp_path / "nothing.yaml")


def test_mode_overrides_reach_the_settings():
    """A mode's override (checked like the shared default) is what the training loop sees."""
    params = variant(modes__finetune__lr=0.003, modes__finetune__augment={"hflip": 0.0})
    params_module.check(params)
    settings = mode_settings(params, "finetune")
    epochs = REAL["modes"]["finetune"].get("epochs", REAL["train"]["epochs"])
    (phase,) = settings.phases
    assert settings.lr == 0.003 and (phase.trainable, phase.epochs, phase.lr) == ("all", epochs, 0.003)
    assert settings.augment.hflip == 0.0 and phase.augment == settings.augment
    assert list(settings.augment.crop_scale) == REAL["train"]["augment"]["crop_scale"]  # the rest: shared
    with pytest.raises(UserError, match="unknown mode 'nope'"):
        mode_settings(params, "nope")


def tree(root: Path) -> dict[str, int]:
    """Every file and folder under root but git's and DVC's own, with its size (folders: -1)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".dvc")]
        rel = Path(dirpath).relative_to(root)
        found.update({(rel / d).as_posix(): -1 for d in dirnames})
        found.update({(rel / f).as_posix(): (Path(dirpath) / f).stat().st_size for f in filenames})
    return found


def test_stage_with_bad_params_reports_all_and_writes_nothing(project):
    """A stage run with several bad params exits 2 with every problem on its own line, no traceback,
    and writes nothing: no model, no logs, no resumable state. A row's own bad backbone is its own line,
    naming the row."""
    project.set_params(mode="fast", model={"arch": "resnet19"}, data={"val_fraction": 0},
                       train={"lr": -0.1, "batch_size": 0, "optimiser": "adam"},
                       modes={"frozen": {"epochs": 0, "scheduler": "linear", "arch": "resnet1"}})
    before = tree(project.path)
    proc = project.stage("train", "frozen", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "train: error: 9 problems in params.yaml:", proc.stderr
    keys = sorted(line.split(": ")[1] for line in lines[1:])
    assert keys == sorted(["mode", "model.arch", "data.val_fraction", "train.lr", "train.batch_size",
                           "train.optimiser", "modes.frozen.epochs", "modes.frozen.scheduler",
                           "modes.frozen.arch"]), proc.stderr
    assert all(LINE.fullmatch(line) for line in lines[1:]), proc.stderr
    assert "params.yaml: modes.frozen.arch: unknown backbone 'resnet1' (did you mean resnet18?" in proc.stderr
    assert proc.stdout == ""
    assert tree(project.path) == before


def test_a_stage_sees_only_the_params_it_declares():
    """declared(): the declared keys with their values, and nothing else to read by mistake."""
    view = params_module.declared(REAL, ("data.url", "modes.{mode}", "train.device"), mode="frozen")
    assert view == {"data": {"url": REAL["data"]["url"]}, "modes": {"frozen": REAL["modes"]["frozen"]},
                    "train": {"device": REAL["train"]["device"]}}
    with pytest.raises(KeyError):
        view["data"]["layout"]
    with pytest.raises(UserError, match="unknown mode 'nope'"):
        params_module.declared(REAL, ("modes.{mode}",), mode="nope")


def test_a_row_may_name_its_own_backbone():
    """`arch` in a mode row: that row's backbone (model.arch stays every other row's); a bad one, or an
    image size it cannot take, is one line naming the row; the other rows' sizes are not held to it."""
    params = variant(modes__frozen__arch="resnet18")
    check_all(params)
    assert mode_settings(params, "frozen").arch == "resnet18"
    assert mode_settings(params, "finetune").arch == REAL["model"]["arch"]
    assert problems(variant(modes__frozen__arch="resnet1")) == [
        "params.yaml: modes.frozen.arch: unknown backbone 'resnet1' (did you mean resnet18? known: "
        + ", ".join(known_archs()) + ")"]
    assert problems(variant(modes__frozen__arch=18)) == [
        "params.yaml: modes.frozen.arch: must be a backbone name (any model.arch takes), got 18"]
    fixed = variant(modes__frozen__arch="timm/vit_tiny_patch16_224", modes__frozen__image_size=64)
    assert problems(fixed) == [
        "params.yaml: modes.frozen.image_size: 64 does not fit modes.frozen.arch timm/vit_tiny_patch16_224: it takes "
        "224 px images only (use 224 or null)"]
