"""Splitting a dataset: find the classes and images in data/raw, open every image once, and assign
each to training, validation or test (the `split` stage's work; the layouts are described there and
in transfer.data.layouts)."""
from __future__ import annotations

import csv
import hashlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from transfer.core.errors import UserError, printable
from transfer.core.paths import CLASSES_JSON, DATA_METRICS, RAW_SKIPPED, split_csv
from transfer.core.settings import SplitSettings
from transfer.core.stage import log
from transfer.data.decode import UnreadableImage, open_rgb
from transfer.data.grouping import keep_together, near_duplicate_groups
from transfer.data.hashing import thumbnail
from transfer.data.layouts import (
    PREFIXED,
    class_folders,
    dataset_root,
    files_under,
    mapped_name,
    read_class_names,
    resolve_layout,
    unused_files,
)

PARTS = ("train", "val", "test")
CHECK_SIZE = 32  # px: the smallest short side a check decodes large JPEGs to
UNUSED_LISTED = 10  # unused files named in metrics/data.json (all are counted)
Rows = list[tuple[str, int]]  # (path relative to data/raw, label), sorted by label then path


@dataclass
class DatasetSplit:
    layout: str
    classes: list[dict]                       # {"index", "folder", "name"}, in label order
    train: Rows
    val: Rows
    test: Rows = field(default_factory=list)               # empty: no test set, val reports
    skipped: list[dict] = field(default_factory=list)     # {"path", "reason"}
    duplicates: list[dict] = field(default_factory=list)  # {"train", "val" or "test"}: the same bytes in both
    warnings: list[str] = field(default_factory=list)
    download_skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}: left out by download
    unused: list[str] = field(default_factory=list)       # files outside the class folders
    excluded: list[str] = field(default_factory=list)     # left out as data.exclude lists them
    near_duplicates: dict = field(default_factory=dict)   # groups of close perceptual hashes (_group_parts)

    def metrics(self) -> dict:
        def counts(rows):
            per_class = {c["folder"]: 0 for c in self.classes}
            for _, label in rows:
                per_class[self.classes[label]["folder"]] += 1
            return {"total": len(rows), "per_class": per_class}

        return {"layout": self.layout, "classes": len(self.classes), "train": counts(self.train),
                "val": counts(self.val), "test": counts(self.test), "skipped": self.skipped,
                "skipped_count": len(self.skipped),
                "duplicates_across_splits": self.duplicates, "duplicates_count": len(self.duplicates),
                "warnings": self.warnings, "download_skipped": self.download_skipped,
                "download_skipped_count": len(self.download_skipped),
                "unused_files": {"count": len(self.unused), "paths": self.unused[:UNUSED_LISTED]},
                "excluded_count": len(self.excluded), "near_duplicates": self.near_duplicates}


def _check_image(path: Path) -> tuple[str | None, str | None, bytes | None]:
    """(reason it is unusable, None, None) or (None, sha1 of its bytes, its 9x8 grayscale thumbnail).

    A large JPEG is checked at 1/8 scale (draft mode): all its compressed data is still read and
    entropy-decoded, so a truncated or corrupt file fails as it would in full, for a fraction of the
    work; the thumbnail (near-duplicates) comes from that same decode. pack then decodes each
    image once more, at the working size."""
    try:
        image = open_rgb(path, draft_size=CHECK_SIZE)
    except UnreadableImage as err:
        return str(err), None, None
    return None, hashlib.sha1(path.read_bytes()).hexdigest(), thumbnail(image)


def _val_indices(count: int, folder: str, layout: str, data: SplitSettings) -> set[int]:
    """Which of a class's `count` sorted images go to val when the split is made here."""
    if layout == "prefix":  # imgs[::k], as the hand-gesture tutorial splits
        return set(range(0, count, data.val_every)) if count > 1 else set()
    # Seeded per class, so adding or removing one class leaves the other classes' split unchanged.
    rng = random.Random(f"{data.split_seed}:{folder}")
    n_val = min(count - 1, max(1, round(count * data.val_fraction))) if count > 1 else 0
    return set(rng.sample(range(count), n_val))


def _test_indices(count: int, folder: str, in_val: set[int], data: SplitSettings) -> set[int]:
    """Which of a class's images go to test: int(count * test_fraction + 0.5) of them (at most all but
    one of those val left), drawn from the rest by their own seeded stream, so val stays as without."""
    rest = [i for i in range(count) if i not in in_val]
    n_test = min(len(rest) - 1, int(count * data.test_fraction + 0.5)) if rest else 0
    return set(random.Random(f"{data.split_seed}:test:{folder}").sample(rest, n_test))


def _named_classes(folders: list[str], layout: str, mapping: dict[str, str], mapping_path: Path | None,
                   warnings: list[str]) -> list[dict]:
    """classes.json's entries: each class folder with its label and its name to show."""
    classes = []
    for index, folder in enumerate(folders):
        name = mapped_name(folder, mapping)
        if name is None:
            if mapping_path:
                warnings.append(f"data.class_names: {mapping_path} has no name for {printable(folder)}; "
                                "using the folder name")
            name = PREFIXED.fullmatch(folder).group(2) if layout == "prefix" else folder
        classes.append({"index": index, "folder": folder, "name": name})
    by_name: dict[str, str] = {}
    for c in classes:  # one name for two classes would merge them in every metric and plot
        if c["name"] in by_name:
            raise UserError(f"data.class_names: classes {printable(by_name[c['name']])} and {printable(c['folder'])} "
                            f"both show as {c['name']!r}"
                            + (f" in {mapping_path}" if mapping_path else "") + "; give each class its own name")
        by_name[c["name"]] = c["folder"]
    return classes


@dataclass
class _Checked:
    """Every candidate file opened once: the usable ones per part and label, and what was found."""
    usable: dict[str, dict[int, list[str]]]  # part ("train", "val" or "all") -> label -> paths
    found: list[int]                         # files per label, usable or not
    digests: dict[str, str | None] = field(default_factory=dict)  # path -> sha1 of its bytes, None if unusable
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # usable path -> its 9x8 grayscale thumbnail
    skipped: list[dict] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # data.exclude's paths found here: not opened, not used


def _check_files(raw: Path, sources: dict[str, Path], folders: list[str], mapping_path: Path | None,
                 exclude: frozenset[str] = frozenset()) -> _Checked:
    candidates = []
    for part, source in sources.items():
        for label, folder in enumerate(folders):
            if (source / folder).is_dir():
                candidates += [(part, label, path) for path in files_under(source / folder) if path != mapping_path]
    checked = _Checked({part: {label: [] for label in range(len(folders))} for part in sources}, [0] * len(folders))
    for part, label, path in tqdm(candidates, desc="checking images", unit="img", file=sys.stderr, mininterval=1):
        relative = path.relative_to(raw).as_posix()
        if relative in exclude:
            checked.excluded.append(relative)
            continue
        reason, checked.digests[relative], small = _check_image(path)
        checked.found[label] += 1
        if reason:
            log(f"skipped {printable(relative)}: {reason}")
            checked.skipped.append({"path": relative, "reason": reason})
        else:
            checked.usable[part][label].append(relative)
            checked.thumbnails[relative] = small
    return checked


def _assign(usable: dict[str, dict[int, list[str]]], folders: list[str], layout: str, data: SplitSettings
            ) -> dict[str, Rows]:
    """{"train", "val", "test"} rows sorted by label then path: as the folders give them, or split here."""
    parts: dict[str, Rows] = {part: [] for part in PARTS}
    if layout == "imagefolder":
        for part, by_label in usable.items():
            parts[part] = [(path, label) for label, paths in by_label.items() for path in paths]
    else:
        for label, paths in usable["all"].items():
            in_val = _val_indices(len(paths), folders[label], layout, data)
            in_test = _test_indices(len(paths), folders[label], in_val, data)
            for i, path in enumerate(paths):
                parts["val" if i in in_val else "test" if i in in_test else "train"].append((path, label))
    for rows in parts.values():
        rows.sort(key=lambda row: (row[1], row[0]))
    return parts


def _group_parts(parts: dict[str, Rows], thumbnails: dict[str, bytes], layout: str, data: SplitSettings
                 ) -> tuple[dict[str, Rows], dict]:
    """The parts with each group of near-duplicates wholly on one side (data.group_duplicates, in a split
    made here; the imagefolder layout's folders give theirs), and what metrics/data.json says of them."""
    rows = [(part, path, label) for part in PARTS for path, label in parts[part]]
    groups = near_duplicate_groups([thumbnails[path] for _, path, _ in rows])
    before = [part for part, _, _ in rows]
    grouped = bool(data.group_duplicates) and layout != "imagefolder"
    after = keep_together(before, [label for *_, label in rows], groups.members, PARTS,
                          f"{data.split_seed}:groups") if grouped else before
    regrouped: dict[str, Rows] = {part: [] for part in PARTS}
    for part, (_, path, label) in zip(after, rows, strict=True):
        regrouped[part].append((path, label))
    for part_rows in regrouped.values():
        part_rows.sort(key=lambda row: (row[1], row[0]))
    near = {"grouped": grouped, "groups": len(groups.members),
            "images_in_groups": sum(len(group) for group in groups.members),
            "largest_group": max((len(group) for group in groups.members), default=0),
            "images_moved": sum(a != b for a, b in zip(before, after, strict=True)), "pairs": len(groups.pairs),
            "pairs_across_splits": int(sum(after[i] != after[j] for i, j in groups.pairs)),
            "images_across_splits": _evaluated_with_pair_across(after, groups.pairs)}
    return regrouped, near


def _evaluated_with_pair_across(parts: list[str], pairs) -> int:
    """How many val and test images have a near-duplicate in another part: what val or test may know by heart."""
    found = set()
    for i, j in pairs:
        if parts[i] != parts[j]:
            found.update(index for index in (int(i), int(j)) if parts[index] != "train")
    return len(found)


def _check_coverage(root: Path, folders: list[str], found: list[int], parts: dict[str, Rows], warnings: list[str]):
    """A class without training images stops the stage; one without val (or, with a test set, test)
    images is a warning."""
    labels = {part: {label for _, label in rows} for part, rows in parts.items()}
    for label, folder in enumerate(folders):
        if label not in labels["train"]:
            where = "training images" if label in labels["val"] | labels["test"] else "images"
            raise UserError(f"{root}: class {printable(folder)} has no usable {where} (of {found[label]} files)")
        if label not in labels["val"]:
            warnings.append(f"class {printable(folder)} has no validation images")
        if parts["test"] and label not in labels["test"]:
            warnings.append(f"class {printable(folder)} has no test images")


def _duplicates(train: Rows, other: Rows, part: str, digests: dict[str, str | None]) -> list[dict]:
    """Val (or test) images byte-identical to a training image, each paired with the first such one."""
    first_in_train = {digests[path]: path for path, _ in reversed(train)}  # reversed: the first one wins
    return [{"train": first_in_train[digests[path]], part: path} for path, _ in other
            if digests[path] in first_in_train]


def make_split(raw: Path, data: SplitSettings) -> DatasetSplit:
    """Everything the stage writes, from the dataset in `raw` and the params' `data` section."""
    if not raw.is_dir():
        raise UserError(f"{raw}: missing; run the download stage first (dvc repro)")
    warnings: list[str] = []
    root = dataset_root(raw, warnings)
    layout = resolve_layout(root, data.layout)
    folders, sources = class_folders(root, layout, warnings)
    mapping, mapping_path = read_class_names(data.class_names, root, raw)
    classes = _named_classes(folders, layout, mapping, mapping_path, warnings)
    if layout == "imagefolder" and data.test_fraction:
        warnings.append("data.test_fraction: ignored, the imagefolder layout's folders give the split")
    exclude = frozenset(data.exclude)
    checked = _check_files(raw, sources, folders, mapping_path, exclude)
    missing = sorted(exclude - set(checked.excluded))
    if missing:
        warnings.append(f"data.exclude: {len(missing)} paths are no image of the dataset, e.g. {missing[0]}")
    parts, near = _group_parts(_assign(checked.usable, folders, layout, data), checked.thumbnails, layout,
                               data)
    if near["groups"]:
        log(f"{near['groups']} groups of near-duplicates ({near['images_in_groups']} images): "
            + (f"{near['images_moved']} images moved to keep each on one side" if near["grouped"]
               else f"{near['pairs_across_splits']} near-duplicate pairs across the splits"))
    _check_coverage(root, folders, checked.found, parts, warnings)
    unused = unused_files(raw, root, sources, mapping_path)
    if unused:
        warnings.append(f"{len(unused)} files outside the class folders are not used, e.g. {unused[0]} "
                        f"(listed in {DATA_METRICS})")
    for warning in warnings:
        log(f"warning: {warning}")
    duplicates = [pair for part in ("val", "test") for pair in _duplicates(parts["train"], parts[part], part,
                                                                           checked.digests)]
    if duplicates:
        log(f"{len(duplicates)} val or test images are byte-identical to training images (listed in {DATA_METRICS})")
    return DatasetSplit(layout, classes, parts["train"], parts["val"], parts["test"], checked.skipped, duplicates,
                        warnings, download_skipped(raw), unused, sorted(checked.excluded), near)


def download_skipped(raw: Path) -> list[dict]:
    """What download left out (data/raw/.skipped.json), so that metrics/data.json shows it too."""
    record = raw / RAW_SKIPPED.name
    if not record.is_file():
        return []
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{record}: not valid JSON ({err}); re-run dvc repro --force download") from None


def write_split(split: DatasetSplit, folder: Path) -> None:
    folder.mkdir(parents=True)
    for part, rows in (("train", split.train), ("val", split.val), ("test", split.test)):
        with open(folder / split_csv(part).name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "label", "class"])
            writer.writerows((path, label, split.classes[label]["folder"]) for path, label in rows)
    (folder / CLASSES_JSON.name).write_text(json.dumps({"classes": split.classes, "layout": split.layout},
                                                    indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
