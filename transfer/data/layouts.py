"""How a dataset folder is laid out: where in data/raw the dataset is, which layout it has, its class
folders in label order and their display names (stages.split uses these to make the split)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from transfer.core.errors import UserError, printable

TRAIN_FOLDERS = ("train", "training")  # in order of preference, compared in lower case
VAL_FOLDERS = ("val", "valid", "validation", "test")
TEST_FOLDER = "test"  # beside a val/ (valid/, validation/) folder: the test set
PREFIXED = re.compile(r"(\d+)[-_](.+)")


def ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not ignored(p.name))


def files_under(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if not ignored(name)]
        found += [Path(dirpath, name) for name in filenames if not ignored(name)]
    return sorted(found, key=Path.as_posix)


def dataset_root(raw: Path, warnings: list[str]) -> Path:
    """`raw`, or the folder holding the dataset: through lone wrapping folders (hymenoptera_data/), and
    into the one folder holding a train/val split when other folders sit beside it (docs/)."""
    root = raw
    while not split_folders(root) and (inner := inner_dataset(root, warnings)):
        root = inner
    return root


def inner_dataset(root: Path, warnings: list[str]) -> Path | None:
    subs = subfolders(root)
    if len(subs) == 1:
        return subs[0] if subfolders(subs[0]) else None
    holding = [sub for sub in subs if split_folders(dataset_root(sub, []))]
    if len(holding) > 1:
        raise UserError(f"{root}: {printable(holding[0].name)}/ and {printable(holding[1].name)}/ both hold a "
                        "train/val split; point data.url at one of them")
    if holding:
        warnings.append(f"{root}: using {printable(holding[0].name)}/, which holds the train/val split; ignoring "
                        + ", ".join(f"{sub.name}/" for sub in subs if sub != holding[0]))
    return holding[0] if holding else None


def resolve_layout(root: Path, layout: str) -> str:
    """The layout data.layout names, checked against the folders in `root`; auto picks one."""
    names = [p.name for p in subfolders(root)]
    splits = split_folders(root)
    if layout == "auto":
        if not splits:
            return "prefix" if names and all(PREFIXED.fullmatch(name) for name in names) else "random"
        layout = "imagefolder"  # half of one (no val/) is a mistake to report, not a random layout
    if layout == "imagefolder" and not (set(splits) & set(TRAIN_FOLDERS) and set(splits) & set(VAL_FOLDERS)):
        raise UserError(f"{root}: the imagefolder layout needs a train/ (or training/) folder and a val/, "
                        f"valid/, validation/ or test/ folder (found: {', '.join(names) or 'no folders'})")
    if layout == "prefix":
        for name in names:
            if not PREFIXED.fullmatch(name):
                raise UserError(f"{root / name}: the prefix layout needs class folders named <number>-<name>, "
                                "like 000-one")
    return layout


def split_folders(root: Path) -> dict[str, str]:
    """The folders in `root` that name a split, by lower-case name: {"train": "Train", "val": "Val"}."""
    found: dict[str, str] = {}
    for name in (p.name for p in subfolders(root) if p.name.lower() in (*TRAIN_FOLDERS, *VAL_FOLDERS)):
        if name.lower() in found:
            raise UserError(f"{root}: {found[name.lower()]}/ and {name}/ name the same split; keep one")
        found[name.lower()] = name
    return found


def read_class_names(setting: str | None, root: Path, raw: Path) -> tuple[dict[str, str], Path | None]:
    """The data.class_names mapping (keys as strings) and the file it came from."""
    if setting is None:
        return {}, None
    path = next((base / setting for base in (root, raw) if (base / setting).is_file()), None)
    if path is None:
        raise UserError(f"data.class_names: {setting}: no such file in {root} or {raw}")
    if raw.resolve() not in path.resolve().parents:  # only a file in data/raw is a dep of split
        raise UserError(f"data.class_names: {setting}: lies outside the dataset ({path.resolve()}), where a "
                        "change to it would go unnoticed; put it in the dataset folder and name it relative to that")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"data.class_names: {path}: not valid JSON ({err})") from None
    if not isinstance(mapping, dict):
        raise UserError(f"data.class_names: {path}: must be a JSON object mapping class folder names or numbers "
                        f"to names")
    return {str(key): str(value) for key, value in mapping.items()}, path


def mapped_name(folder: str, mapping: dict[str, str]) -> str | None:
    """The class's name in a data.class_names mapping: keyed by the folder name, or by the folder's
    number (prefix layout, or a folder named by a number) as any whole-number string: 1, "1", "001"."""
    if folder in mapping:
        return mapping[folder]
    prefixed = PREFIXED.fullmatch(folder)
    number = prefixed.group(1) if prefixed else folder if folder.isdigit() else None
    if number is None:
        return None
    return next((name for key, name in mapping.items() if key.isdigit() and int(key) == int(number)), None)


def split_sources(root: Path, warnings: list[str]) -> dict[str, Path]:
    """{"train":, "val":} folders of an imagefolder dataset, and "test": when test/ sits beside a val/
    (valid/, validation/) folder; alone beside train/, test/ is the validation set."""
    splits = split_folders(root)
    sources = {}
    roles = [("train", "training", TRAIN_FOLDERS), ("val", "validation", VAL_FOLDERS)]
    if TEST_FOLDER in splits and any(name in splits for name in VAL_FOLDERS if name != TEST_FOLDER):
        roles = [roles[0], ("val", "validation", VAL_FOLDERS[:-1]), ("test", "test", (TEST_FOLDER,))]
    for part, role, preferred in roles:
        found = [splits[name] for name in preferred if name in splits]
        if len(found) > 1:
            warnings.append(f"{root}: using {found[0]}/ as the {role} set; ignoring "
                            + ", ".join(f"{name}/" for name in found[1:]))
        sources[part] = root / found[0]
    return sources


def class_folders(root: Path, layout: str, warnings: list[str]) -> tuple[list[str], dict[str, Path]]:
    """The class folder names in label order, and the folders holding them: {"train":, "val":} (and
    "test":) when the layout gives the split, {"all": root} when the split is made here."""
    if layout == "imagefolder":
        sources = split_sources(root, warnings)
        folders = [p.name for p in subfolders(sources["train"])]
        for part in sources.keys() - {"train"}:
            for extra in sorted({p.name for p in subfolders(sources[part])} - set(folders)):
                raise UserError(f"{printable(sources[part] / extra)}: class missing from {sources['train']}")
    else:
        sources = {"all": root}
        folders = [p.name for p in subfolders(root)]
    if len(folders) < 2:
        raise UserError(f"{root}: found {len(folders)} class folder(s) "
                        f"({', '.join(map(printable, folders)) or 'none'}); "
                        "need at least two")
    if layout == "prefix":
        by_number: dict[int, str] = {}
        for folder in folders:
            number = int(PREFIXED.fullmatch(folder).group(1))
            if number in by_number:
                raise UserError(f"{root}: class folders {printable(by_number[number])} and {printable(folder)} "
                                f"have the same number {number}")
            by_number[number] = folder
        folders = [by_number[number] for number in sorted(by_number)]
    return folders, sources


def unused_files(raw: Path, root: Path, sources: dict[str, Path], keep: Path | None) -> list[str]:
    """Files no class folder holds, so that no split uses them: loose beside the class folders, in
    train/ or val/ themselves, or beside the folders wrapping the dataset. Paths relative to `raw`."""
    folders = [root, *(p for p in root.parents if p == raw or raw in p.parents), *sources.values()]
    found = {p for folder in folders for p in folder.iterdir()
             if p.is_file() and not ignored(p.name) and p != keep}
    return sorted(p.relative_to(raw).as_posix() for p in found)
