"""params.yaml as typed, frozen settings: the one place that says what each section, a mode row, each
of its phases and its augmentations hold, with their types.

`mode_settings(params, mode)` and `section(params, name, cls)` build them once from params.yaml after
transfer.core.params has checked it (every key known, every value in range, each problem one line
naming the key), so code reads attributes (`phase.lr`, `pack.short_side`), never string keys. The key
sets the checker accepts are these classes' fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transfer.core.errors import UserError


@dataclass(frozen=True, kw_only=True)
class Augment:
    """train.augment: the tutorials' augmentations; 0 or null switches one off."""

    crop_scale: tuple[float, float] | None  # RandomResizedCrop's scale range; None: resize + center crop
    crop_size: int | None = None  # px of the training crops; None: the working image size
    hflip: float
    vflip: float
    rotation: float
    color_jitter: float
    grayscale: float

    def is_random(self) -> bool:
        """Whether it draws anything at random (else every view of an image is the same)."""
        return any((self.crop_scale, self.hflip, self.vflip, self.rotation, self.color_jitter, self.grayscale))


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """params.yaml `train`: the shared defaults; a mode row, and each of its phases, may override any."""

    seed: int
    device: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    scheduler: str
    warmup_epochs: float
    step_size: int
    gamma: float
    label_smoothing: float
    class_weights: str
    patience: int | None
    stop_on: str
    keep_bn_stats: bool
    layer_decay: float | None
    clip_grad_norm: float | None
    image_size: int | None
    augment: Augment
    cached_views: int
    workers: int | str
    memory_budget_mb: float
    inference_dtype: str
    nproc: int


@dataclass(frozen=True, kw_only=True)
class Phase(TrainSettings):
    """One phase of a mode: what trains (`trainable`: head, top or all) and how, for `epochs` epochs."""

    trainable: str
    top_blocks: int = 0  # trainable: top: the last blocks of the body that train
    backbone_lr_scale: float = 1.0  # the pretrained body's rate relative to lr


@dataclass(frozen=True, kw_only=True)
class ModeSettings(Phase):
    """A whole mode: the row over the shared defaults, and its phases, each complete. `epochs` is all
    phases' together and `trainable` the last phase's."""

    mode: str
    arch: str
    pretrained: bool
    phases: tuple[Phase, ...]

    def as_dict(self) -> dict:
        """Plain data (a checkpoint's metadata, the resume fingerprint)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    """data.* that stage download reads: where the dataset comes from."""

    url: str  # http(s) URL, archive or folder
    watch: str  # what DVC hashes to see the data change
    sha256: str | None
    max_unpacked_mb: float


@dataclass(frozen=True, kw_only=True)
class SplitSettings:
    """data.* that stage split reads: how the images are cut into train, val and test."""

    layout: str
    val_every: int
    val_fraction: float
    test_fraction: float
    split_seed: int
    class_names: str | None
    exclude: list[str]
    group_duplicates: bool


@dataclass(frozen=True, kw_only=True)
class PackSettings:
    """pack.*: how every image is decoded once into data/store."""

    short_side: int
    interpolation: str
    encoding: str
    jpeg_quality: int
    jpeg_draft: bool
    shard_mb: float


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """audit.*: the data audit's backbone and its three finders' settings."""

    arch: str
    device: str
    image_size: int | None
    folds: int
    seed: int
    suspects_shown: int
    duplicate_similarity: float
    outlier_neighbors: int
    outlier_mads: float


@dataclass(frozen=True, kw_only=True)
class ExportSettings:
    """export.*: the int8 file's calibration and the published model's unsure threshold."""

    calibration_images: int
    target_accuracy: float | None


@dataclass(frozen=True, kw_only=True)
class CompareSettings:
    """compare.*: what "cheapest" means among the tied candidates."""

    cost: str


def section(params: dict, name: str, cls):
    """The fields of `cls` in params[name] (checked, as transfer.core.params.declared gives a stage) as a
    `cls`: data.* holds two, the download's (SourceSettings) and the split's (SplitSettings)."""
    return cls(**{key: params[name][key] for key in field_names(cls)})


def field_names(cls) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


TRAIN_KEYS = field_names(TrainSettings)
DATA_KEYS = field_names(SourceSettings) | field_names(SplitSettings)
PACK_KEYS = field_names(PackSettings)
AUDIT_KEYS = field_names(AuditSettings)
EXPORT_KEYS = field_names(ExportSettings)
COMPARE_KEYS = field_names(CompareSettings)
AUGMENT_KEYS = field_names(Augment)
# What one phase of a mode may set: what trains, and any `train` key that may change between phases
# (early stopping is the row's: it counts in the last phase; where the run happens is the whole run's).
PHASE_KEYS = (field_names(Phase) - {"seed", "device", "image_size", "memory_budget_mb", "patience", "stop_on",
                                    "nproc"})
# Settings only a mode row may hold (besides any key of `train`, as an override).
MODE_KEYS = {"arch", "pretrained", "trainable", "top_blocks", "head_epochs", "head_lr", "backbone_lr_scale",
             "phases"}
# The shorthand of a two-phase mode, which a row with `phases:` gives inside its phases instead.
PHASE_SHORTHAND = ("trainable", "top_blocks", "head_epochs", "head_lr", "epochs")


def mode_settings(params: dict, mode: str) -> ModeSettings:
    """The complete settings of one mode of checked params: the shared `train` defaults overlaid with
    the mode's row, and its phases, each the mode's settings overlaid with the phase's own. `arch` is
    the row's own, else model.arch."""
    if mode not in params["modes"]:
        raise UserError(f"unknown mode {mode!r} (known: {', '.join(params['modes'])})")
    row = params["modes"][mode]
    merged = overlay(params["train"], {k: v for k, v in row.items() if k not in ("phases", "arch")})
    merged.setdefault("top_blocks", 0)
    merged.setdefault("backbone_lr_scale", 1.0)
    phases = row.get("phases") or shorthand_phases(merged)
    base = {k: v for k, v in merged.items() if k in field_names(Phase) - {"trainable", "epochs"}}
    built = tuple(Phase(**_typed(overlay(base, phase))) for phase in phases)
    whole = {k: v for k, v in merged.items() if k in field_names(Phase)}
    whole.update(trainable=built[-1].trainable, epochs=sum(phase.epochs for phase in built))
    return ModeSettings(**_typed(whole), mode=mode, arch=row.get("arch", params["model"]["arch"]),
                        pretrained=row["pretrained"], phases=built)


def _typed(values: dict) -> dict:
    augment = values["augment"]
    scale = augment.get("crop_scale")
    typed_augment = Augment(**{**augment, "crop_scale": tuple(scale) if scale is not None else None})
    return {**values, "augment": typed_augment}


def shorthand_phases(settings: dict) -> list[dict]:
    """`head_epochs` > 0: the head alone first, at `head_lr` (fastai's fine_tune); then what `trainable` names."""
    main = {"trainable": settings["trainable"], "top_blocks": settings["top_blocks"], "epochs": settings["epochs"],
            "lr": settings["lr"]}
    if not settings.get("head_epochs"):
        return [main]
    head = {"trainable": "head", "epochs": settings["head_epochs"], "lr": settings.get("head_lr", settings["lr"])}
    return [head, main]


def overlay(base: dict, row: dict) -> dict:
    """A copy of `base` with `row`'s keys set over it (`augment` merged key by key)."""
    merged = dict(base)
    for key, value in row.items():
        if key == "augment":
            merged["augment"] = {**merged.get("augment", {}), **value}
        else:
            merged[key] = value
    return merged
