"""Stage `split`: find the classes and images in data/raw, open every image once, and split them into
training and validation sets.

Writes data/split/ (train.csv and val.csv with `path,label,class` rows, paths relative to data/raw;
classes.json) and metrics/data.json (counts, skipped files with the reason, duplicates, warnings).

Layouts (params data.layout):
  imagefolder  train/<class>/... plus val/, valid/ or test/<class>/...: the split is given (any case;
               training/ and validation/ too)
  prefix       <number>-<name>/... per class (000-one): every data.val_every-th image goes to val
  random       <class>/...: a seeded stratified split, data.val_fraction of each class to val
  auto         the first two when the folders look like them, else random
A single folder wrapping the dataset (hymenoptera_data/) is looked through, and so is the one folder
holding a train/val split beside others (docs/)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from stages import params
from stages.common import atomic_path, fail, log, run_main, write_json
from stages.images import UnreadableImage, open_rgb
from stages.paths import CLASSES_JSON, DATA_METRICS, RAW_DIR, SPLIT_DIR, split_csv

TRAIN_FOLDERS = ("train", "training")  # in order of preference, compared in lower case
VAL_FOLDERS = ("val", "valid", "validation", "test")
PREFIXED = re.compile(r"(\d+)[-_](.+)")
Rows = list[tuple[str, int]]  # (path relative to data/raw, label), sorted by label then path


@dataclass
class Split:
    layout: str
    classes: list[dict]                       # {"index", "folder", "name"}, in label order
    train: Rows
    val: Rows
    skipped: list[dict] = field(default_factory=list)     # {"path", "reason"}
    duplicates: list[dict] = field(default_factory=list)  # {"train", "val"}: the same bytes in both
    warnings: list[str] = field(default_factory=list)

    def metrics(self) -> dict:
        def counts(rows):
            per_class = {c["folder"]: 0 for c in self.classes}
            for _, label in rows:
                per_class[self.classes[label]["folder"]] += 1
            return {"total": len(rows), "per_class": per_class}

        return {"layout": self.layout, "classes": len(self.classes), "train": counts(self.train),
                "val": counts(self.val), "skipped": self.skipped, "skipped_count": len(self.skipped),
                "duplicates_across_splits": self.duplicates, "duplicates_count": len(self.duplicates),
                "warnings": self.warnings}


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _ignored(p.name))


def _files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if not _ignored(name)]
        found += [Path(dirpath, name) for name in filenames if not _ignored(name)]
    return sorted(found, key=Path.as_posix)


def dataset_root(raw: Path, warnings: list[str]) -> Path:
    """`raw`, or the folder holding the dataset: through lone wrapping folders (hymenoptera_data/), and
    into the one folder holding a train/val split when other folders sit beside it (docs/)."""
    root = raw
    while not _split_folders(root) and (inner := _inner_dataset(root, warnings)):
        root = inner
    return root


def _inner_dataset(root: Path, warnings: list[str]) -> Path | None:
    subs = _subfolders(root)
    if len(subs) == 1:
        return subs[0] if _subfolders(subs[0]) else None
    holding = [sub for sub in subs if _split_folders(dataset_root(sub, []))]
    if len(holding) > 1:
        fail(f"{root}: {holding[0].name}/ and {holding[1].name}/ both hold a train/val split; "
             "point data.url at one of them")
    if holding:
        warnings.append(f"{root}: using {holding[0].name}/, which holds the train/val split; ignoring "
                        + ", ".join(f"{sub.name}/" for sub in subs if sub != holding[0]))
    return holding[0] if holding else None


def resolve_layout(root: Path, layout: str) -> str:
    """The layout data.layout names, checked against the folders in `root`; auto picks one."""
    names = [p.name for p in _subfolders(root)]
    splits = _split_folders(root)
    if layout == "auto":
        if not splits:
            return "prefix" if names and all(PREFIXED.fullmatch(name) for name in names) else "random"
        layout = "imagefolder"  # half of one (no val/) is a mistake to report, not a random layout
    if layout == "imagefolder" and not (set(splits) & set(TRAIN_FOLDERS) and set(splits) & set(VAL_FOLDERS)):
        fail(f"{root}: the imagefolder layout needs a train/ (or training/) folder and a val/, valid/, validation/ "
             f"or test/ folder (found: {', '.join(names) or 'no folders'})")
    if layout == "prefix":
        for name in names:
            if not PREFIXED.fullmatch(name):
                fail(f"{root / name}: the prefix layout needs class folders named <number>-<name>, like 000-one")
    return layout


def _split_folders(root: Path) -> dict[str, str]:
    """The folders in `root` that name a split, by lower-case name: {"train": "Train", "val": "Val"}."""
    found: dict[str, str] = {}
    for name in (p.name for p in _subfolders(root) if p.name.lower() in (*TRAIN_FOLDERS, *VAL_FOLDERS)):
        if name.lower() in found:
            fail(f"{root}: {found[name.lower()]}/ and {name}/ name the same split; keep one")
        found[name.lower()] = name
    return found


def _class_names(setting: str | None, root: Path, raw: Path) -> tuple[dict[str, str], Path | None]:
    """The data.class_names mapping (keys as strings) and the file it came from."""
    if setting is None:
        return {}, None
    path = next((base / setting for base in (root, raw) if (base / setting).is_file()), None)
    if path is None:
        fail(f"data.class_names: {setting}: no such file in {root} or {raw}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        fail(f"data.class_names: {path}: not valid JSON ({err})")
    if not isinstance(mapping, dict):
        fail(f"data.class_names: {path}: must be a JSON object mapping class folder names or numbers to names")
    return {str(key): str(value) for key, value in mapping.items()}, path


def _mapped_name(folder: str, mapping: dict[str, str]) -> str | None:
    """The class's name in a data.class_names mapping: keyed by the folder name, or by the folder's
    number (prefix layout, or a folder named by a number) as any whole-number string: 1, "1", "001"."""
    if folder in mapping:
        return mapping[folder]
    prefixed = PREFIXED.fullmatch(folder)
    number = prefixed.group(1) if prefixed else folder if folder.isdigit() else None
    if number is None:
        return None
    return next((name for key, name in mapping.items() if key.isdigit() and int(key) == int(number)), None)


def _class_folders(root: Path, layout: str, warnings: list[str]) -> tuple[list[str], dict[str, Path]]:
    """The class folder names in label order, and the folders holding them: {"train":, "val":} when
    the layout gives the split, {"all": root} when the split is made here."""
    if layout == "imagefolder":
        splits, sources = _split_folders(root), {}
        for part, role, preferred in (("train", "training", TRAIN_FOLDERS), ("val", "validation", VAL_FOLDERS)):
            found = [splits[name] for name in preferred if name in splits]
            if len(found) > 1:
                warnings.append(f"{root}: using {found[0]}/ as the {role} set; ignoring "
                                + ", ".join(f"{name}/" for name in found[1:]))
            sources[part] = root / found[0]
        folders = [p.name for p in _subfolders(sources["train"])]
        for extra in sorted({p.name for p in _subfolders(sources["val"])} - set(folders)):
            fail(f"{sources['val'] / extra}: class missing from {sources['train']}")
    else:
        sources = {"all": root}
        folders = [p.name for p in _subfolders(root)]
    if len(folders) < 2:
        fail(f"{root}: found {len(folders)} class folder(s) ({', '.join(folders) or 'none'}); need at least two")
    if layout == "prefix":
        by_number: dict[int, str] = {}
        for folder in folders:
            number = int(PREFIXED.fullmatch(folder).group(1))
            if number in by_number:
                fail(f"{root}: class folders {by_number[number]} and {folder} have the same number {number}")
            by_number[number] = folder
        folders = [by_number[number] for number in sorted(by_number)]
    return folders, sources


def _check_image(path: Path) -> tuple[str | None, str | None]:
    """(reason it is unusable, None) or (None, sha1 of its bytes)."""
    try:
        open_rgb(path)
    except UnreadableImage as err:
        return str(err), None
    return None, hashlib.sha1(path.read_bytes()).hexdigest()


def _val_indices(count: int, folder: str, layout: str, data: dict) -> set[int]:
    """Which of a class's `count` sorted images go to val when the split is made here."""
    if layout == "prefix":
        every = data["val_every"]
        return {i for i in range(count) if i % every == every - 1}
    # Seeded per class, so adding or removing one class leaves the other classes' split unchanged.
    rng = random.Random(f"{data['split_seed']}:{folder}")
    n_val = min(count - 1, max(1, round(count * data["val_fraction"]))) if count > 1 else 0
    return set(rng.sample(range(count), n_val))


def _named_classes(folders: list[str], layout: str, mapping: dict[str, str], mapping_path: Path | None,
                   warnings: list[str]) -> list[dict]:
    """classes.json's entries: each class folder with its label and its name to show."""
    classes = []
    for index, folder in enumerate(folders):
        name = _mapped_name(folder, mapping)
        if name is None:
            if mapping_path:
                warnings.append(f"data.class_names: {mapping_path} has no name for {folder}; using the folder name")
            name = PREFIXED.fullmatch(folder).group(2) if layout == "prefix" else folder
        classes.append({"index": index, "folder": folder, "name": name})
    return classes


@dataclass
class _Checked:
    """Every candidate file opened once: the usable ones per part and label, and what was found."""
    usable: dict[str, dict[int, list[str]]]  # part ("train", "val" or "all") -> label -> paths
    found: list[int]                         # files per label, usable or not
    digests: dict[str, str | None] = field(default_factory=dict)  # path -> sha1 of its bytes, None if unusable
    skipped: list[dict] = field(default_factory=list)


def _check_files(raw: Path, sources: dict[str, Path], folders: list[str], mapping_path: Path | None) -> _Checked:
    candidates = []
    for part, source in sources.items():
        for label, folder in enumerate(folders):
            if (source / folder).is_dir():
                candidates += [(part, label, path) for path in _files(source / folder) if path != mapping_path]
    checked = _Checked({part: {label: [] for label in range(len(folders))} for part in sources}, [0] * len(folders))
    for part, label, path in tqdm(candidates, desc="checking images", unit="img", file=sys.stderr, mininterval=1):
        relative = path.relative_to(raw).as_posix()
        reason, checked.digests[relative] = _check_image(path)
        checked.found[label] += 1
        if reason:
            log(f"skipped {relative}: {reason}")
            checked.skipped.append({"path": relative, "reason": reason})
        else:
            checked.usable[part][label].append(relative)
    return checked


def _assign(usable: dict[str, dict[int, list[str]]], folders: list[str], layout: str, data: dict) -> tuple[Rows, Rows]:
    """(train, val) rows sorted by label then path: as the folders give them, or split here."""
    if layout == "imagefolder":
        train = [(path, label) for label, paths in usable["train"].items() for path in paths]
        val = [(path, label) for label, paths in usable["val"].items() for path in paths]
    else:
        train, val = [], []
        for label, paths in usable["all"].items():
            in_val = _val_indices(len(paths), folders[label], layout, data)
            for i, path in enumerate(paths):
                (val if i in in_val else train).append((path, label))
    train.sort(key=lambda row: (row[1], row[0]))
    val.sort(key=lambda row: (row[1], row[0]))
    return train, val


def _check_coverage(root: Path, folders: list[str], found: list[int], train: Rows, val: Rows, warnings: list[str]):
    """A class without training images stops the stage; one without validation images is a warning."""
    in_train = {label for _, label in train}
    in_val = {label for _, label in val}
    for label, folder in enumerate(folders):
        if label not in in_train:
            where = "training images" if label in in_val else "images"
            fail(f"{root}: class {folder} has no usable {where} (of {found[label]} files)")
        if label not in in_val:
            warnings.append(f"class {folder} has no validation images")


def _duplicates(train: Rows, val: Rows, digests: dict[str, str | None]) -> list[dict]:
    """Validation images byte-identical to a training image, each paired with the first such one."""
    first_in_train = {digests[path]: path for path, _ in reversed(train)}  # reversed: the first one wins
    return [{"train": first_in_train[digests[path]], "val": path} for path, _ in val
            if digests[path] in first_in_train]


def make_split(raw: Path, data: dict) -> Split:
    """Everything the stage writes, from the dataset in `raw` and the params' `data` section."""
    if not raw.is_dir():
        fail(f"{raw}: missing; run the download stage first (dvc repro)")
    warnings: list[str] = []
    root = dataset_root(raw, warnings)
    layout = resolve_layout(root, data["layout"])
    folders, sources = _class_folders(root, layout, warnings)
    mapping, mapping_path = _class_names(data["class_names"], root, raw)
    classes = _named_classes(folders, layout, mapping, mapping_path, warnings)
    checked = _check_files(raw, sources, folders, mapping_path)
    train, val = _assign(checked.usable, folders, layout, data)
    _check_coverage(root, folders, checked.found, train, val, warnings)
    for warning in warnings:
        log(f"warning: {warning}")
    duplicates = _duplicates(train, val, checked.digests)
    if duplicates:
        log(f"{len(duplicates)} validation images are byte-identical to training images (listed in {DATA_METRICS})")
    return Split(layout, classes, train, val, checked.skipped, duplicates, warnings)


def write_split(split: Split, folder: Path) -> None:
    folder.mkdir(parents=True)
    for part, rows in (("train", split.train), ("val", split.val)):
        with open(folder / split_csv(part).name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "label", "class"])
            writer.writerows((path, label, split.classes[label]["folder"]) for path, label in rows)
    (folder / CLASSES_JSON.name).write_text(json.dumps({"classes": split.classes, "layout": split.layout},
                                                    indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@run_main
def main() -> None:
    data = params.load()["data"]
    split = make_split(RAW_DIR, data)
    with atomic_path(SPLIT_DIR) as folder:
        write_split(split, folder)
    write_json(DATA_METRICS, split.metrics())
    log(f"{split.layout} layout, {len(split.classes)} classes: {len(split.train)} train, {len(split.val)} val, "
        f"{len(split.skipped)} skipped")


if __name__ == "__main__":
    main()
