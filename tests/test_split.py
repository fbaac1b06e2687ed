"""Stage `split`, transfer/data/decode.py, and `dvc repro` of download + split: generated datasets in every
layout, odd and broken image files, and (when present) the real hymenoptera dataset."""
from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages import download, split
from tests.conftest import HYMENOPTERA_ZIP, MIRROR_ENV, ROOT, run_in_process, split_settings
from tests.imagegen import make_image, write_class_folders
from transfer.core.errors import UserError
from transfer.core.paths import DATA_METRICS, PARAMS_FILE, RAW_DIR, TRAIN_CSV, VAL_CSV
from transfer.data import splitting
from transfer.data.decode import UnreadableImage, open_rgb
from transfer.data.grouping import keep_together


def make_split(raw: Path, **data) -> splitting.DatasetSplit:
    return splitting.make_split(raw, split_settings(**data))


def per_class(rows: list[tuple[str, int]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, label in rows:
        counts[label] = counts.get(label, 0) + 1
    return counts


# --- layouts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("val_name", ["val", "valid", "test"])
def test_imagefolder_layout(val_name, tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw / "train", {"bees": 3, "ants": 4})
    write_class_folders(raw / val_name, {"bees": 2, "ants": 1}, seed=1)
    result = make_split(raw)
    assert result.layout == "imagefolder"
    assert [c["folder"] for c in result.classes] == ["ants", "bees"]  # sorted by folder name
    assert result.train[0] == ("train/ants/ants_000.jpg", 0) and per_class(result.train) == {0: 4, 1: 3}
    assert result.val[-1] == (f"{val_name}/bees/bees_001.jpg", 1) and per_class(result.val) == {0: 1, 1: 2}
    assert result.warnings == [] and result.skipped == [] and result.duplicates == []


@pytest.mark.parametrize("train_name, val_name", [("Train", "Val"), ("training", "validation"), ("TRAINING", "Valid")])
def test_imagefolder_split_folders_in_any_case_and_by_their_long_names(train_name, val_name, tmp_path):
    """Train/ + Val/ or training/ + validation/ are the given split, not two classes named after them."""
    raw = tmp_path / "raw"
    write_class_folders(raw / train_name, {"ants": 3, "bees": 2})
    write_class_folders(raw / val_name, {"ants": 1, "bees": 2}, seed=1)
    result = make_split(raw)
    assert result.layout == "imagefolder" and [c["folder"] for c in result.classes] == ["ants", "bees"]
    assert per_class(result.train) == {0: 3, 1: 2} and per_class(result.val) == {0: 1, 1: 2}
    assert result.train[0] == (f"{train_name}/ants/ants_000.jpg", 0) and result.val[0][0].startswith(f"{val_name}/")
    assert result.warnings == []


def test_split_folders_differing_only_in_case_are_a_user_error(tmp_path):
    raw = tmp_path / "raw"
    for name in ("train", "Train", "val"):
        write_class_folders(raw / name, {"ants": 1, "bees": 1})
    with pytest.raises(UserError, match=r"^.*raw: Train/ and train/ name the same split; keep one$"):
        make_split(raw)


@pytest.mark.parametrize("extra, part, used, role", [("training", "train", "train", "training"),
                                                      ("valid", "val", "val", "validation")])
def test_imagefolder_prefers_one_folder_per_split_and_says_what_it_ignores(tmp_path, extra, part, used, role):
    """train/ beside training/ uses train/; val/ beside valid/ uses val/; each says what it ignores."""
    raw = tmp_path / "raw"
    write_class_folders(raw / "train", {"ants": 2, "bees": 2})
    write_class_folders(raw / "val", {"ants": 1, "bees": 1}, seed=1)
    write_class_folders(raw / extra, {"ants": 1, "bees": 1}, seed=2)
    result = make_split(raw)
    assert all(path.startswith(f"{used}/") for path, _ in getattr(result, part))
    assert result.warnings == [f"{raw}: using {used}/ as the {role} set; ignoring {extra}/"]


def test_prefix_layout_puts_every_fifth_image_in_val(tmp_path):
    """imgs[::5] of each class, counting from the first, as the hand-gesture tutorial splits."""
    raw = tmp_path / "raw"
    write_class_folders(raw, {"013-nine": 10, "000-one": 11, "001-two": 10})
    result = make_split(raw)
    assert result.layout == "prefix"
    assert [(c["folder"], c["name"]) for c in result.classes] == [("000-one", "one"), ("001-two", "two"),
                                                                   ("013-nine", "nine")]  # by number
    assert per_class(result.train) == {0: 8, 1: 8, 2: 8} and per_class(result.val) == {0: 3, 1: 2, 2: 2}
    assert [path for path, label in result.val if label == 2] == ["013-nine/013-nine_000.jpg",
                                                                  "013-nine/013-nine_005.jpg"]
    assert result.test == []


def test_imagefolder_with_val_and_test_folders_gives_three_splits(tmp_path):
    """train/, valid/ and test/: valid/ selects, test/ reports; test/ alone beside train/ stays val (above)."""
    raw = tmp_path / "raw"
    write_class_folders(raw / "train", {"ants": 3, "bees": 3})
    write_class_folders(raw / "valid", {"ants": 2, "bees": 1}, seed=1)
    write_class_folders(raw / "test", {"ants": 1, "bees": 2}, seed=2)
    result = make_split(raw)
    assert all(path.startswith("valid/") for path, _ in result.val) and per_class(result.val) == {0: 2, 1: 1}
    assert all(path.startswith("test/") for path, _ in result.test) and per_class(result.test) == {0: 1, 1: 2}
    assert result.warnings == [] and result.metrics()["test"] == {"total": 3, "per_class": {"ants": 1, "bees": 2}}
    splitting.write_split(result, tmp_path / "split")
    first = {"path": "test/ants/ants_000.jpg", "label": "0", "class": "ants"}
    assert read_csv(tmp_path / "split" / "test.csv")[0] == first


@pytest.mark.parametrize("layout", ["random", "prefix"])
def test_test_fraction_holds_out_exact_seeded_stratified_counts(layout, tmp_path):
    """int(n * test_fraction + 0.5) of each class's n images go to test, drawn from what val left;
    val is the same as without a test share; the seed draws another test set."""
    raw = tmp_path / "raw"
    names = {"random": ("cats", "dogs", "owls"), "prefix": ("0-cats", "1-dogs", "2-owls")}[layout]
    write_class_folders(raw, dict(zip(names, (10, 7, 20))))
    without = make_split(raw)
    result = make_split(raw, test_fraction=0.25)
    assert result.layout == layout and result.val == without.val
    assert per_class(result.test) == {0: 3, 1: 2, 2: 5}  # 2.5 -> 3, 1.75 -> 2, 5.0 -> 5
    assert per_class(result.train) == {label: n - per_class(without.val)[label] - per_class(result.test)[label]
                                       for label, n in enumerate((10, 7, 20))}
    assert not {path for path, _ in result.test} & {path for path, _ in result.train + result.val}
    assert make_split(raw, test_fraction=0.25).test == result.test
    assert make_split(raw, test_fraction=0.25, split_seed=1).test != result.test
    assert make_split(raw, test_fraction=0.0).test == []


def test_prefix_numbers_must_differ(tmp_path):
    write_class_folders(tmp_path / "raw", {"1-one": 2, "01-uno": 2})
    with pytest.raises(UserError, match="class folders 01-uno and 1-one have the same number 1"):
        make_split(tmp_path / "raw", layout="prefix")


def test_random_layout_is_stratified_and_seeded(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw, {"cats": 10, "dogs": 10, "owls": 20})
    result = make_split(raw)
    assert result.layout == "random"
    assert per_class(result.val) == {0: 3, 1: 3, 2: 6} and per_class(result.train) == {0: 7, 1: 7, 2: 14}
    assert make_split(raw).val == result.val
    assert make_split(raw, split_seed=1).val != result.val


@pytest.mark.parametrize("layout", ["imagefolder", "prefix"])
def test_a_layout_that_does_not_fit_is_a_user_error(layout, tmp_path):
    write_class_folders(tmp_path / "raw", {"cats": 2, "dogs": 2})
    with pytest.raises(UserError, match=f"the {layout} layout needs"):
        make_split(tmp_path / "raw", layout=layout)


def test_wrapping_folders_are_looked_through(tmp_path):
    raw = tmp_path / "raw"
    root = raw / "outer" / "inner"
    write_class_folders(root / "train", {"ants": 2, "bees": 2})
    write_class_folders(root / "val", {"ants": 1, "bees": 1}, seed=1)
    (raw / "README.txt").write_text("not part of any class")
    (raw / "__MACOSX" / "outer").mkdir(parents=True)
    (raw / ".cache").mkdir()
    result = make_split(raw)
    assert result.layout == "imagefolder"
    assert result.train[0][0] == "outer/inner/train/ants/ants_000.jpg"
    assert len(result.train) == 4 and len(result.val) == 2 and result.skipped == []


def test_the_folder_holding_the_split_is_found_beside_other_folders(tmp_path):
    """hymeno/{train,val} beside docs/: hymeno's classes, not classes named docs and hymeno; docs/ is
    named in a warning."""
    raw = tmp_path / "raw"
    write_class_folders(raw / "hymeno" / "train", {"ants": 2, "bees": 2})
    write_class_folders(raw / "hymeno" / "val", {"ants": 1, "bees": 1}, seed=1)
    (raw / "docs").mkdir()
    make_image(0, seed=3).save(raw / "docs" / "diagram.png")
    result = make_split(raw)
    assert result.layout == "imagefolder" and [c["folder"] for c in result.classes] == ["ants", "bees"]
    assert result.train[0] == ("hymeno/train/ants/ants_000.jpg", 0) and len(result.val) == 2
    assert result.warnings == [f"{raw}: using hymeno/, which holds the train/val split; ignoring docs/"]


def test_two_folders_holding_a_split_are_a_user_error(tmp_path):
    raw = tmp_path / "raw"
    for name in ("bugs", "cats"):
        write_class_folders(raw / name / "wrapped" / "train", {"a": 1, "b": 1})
        write_class_folders(raw / name / "wrapped" / "val", {"a": 1, "b": 1})
    with pytest.raises(UserError, match=r"raw: bugs/ and cats/ both hold a train/val split; point data.url at one"):
        make_split(raw)


# --- image files ------------------------------------------------------------------------------------

def write_odd_images(folder: Path) -> dict[str, str]:
    """Files of every odd kind in `folder`; returns {file name: reason} for those split must skip."""
    folder.mkdir(parents=True, exist_ok=True)
    base = make_image(0, seed=7)
    base.convert("L").save(folder / "gray.png")
    base.convert("P").save(folder / "palette.png", transparency=0)
    base.convert("RGBA").save(folder / "alpha.png")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.full((40, 48), 40000, np.uint16)).save(folder / "deep.png")
    base.save(folder / "truncated.jpg")
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("not a picture")
    (folder / "empty.jpg").touch()
    (folder / "notes.txt").write_text("some notes")
    (folder / ".hidden.jpg").write_text("ignored entirely")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._gray.png").write_text("ignored entirely")
    return {"truncated.jpg": "truncated image", "text.jpg": "not an image", "empty.jpg": "empty file",
            "notes.txt": "not an image"}


def test_odd_modes_are_used_and_broken_files_skipped_with_a_reason(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw / "train", {"ants": 2, "bees": 2})
    write_class_folders(raw / "val", {"ants": 1, "bees": 1}, seed=1)
    unusable = write_odd_images(raw / "train" / "ants")
    result = make_split(raw)
    assert {item["path"]: item["reason"] for item in result.skipped} == {
        f"train/ants/{name}": reason for name, reason in unusable.items()}
    assert sorted(path.rsplit("/", 1)[1] for path, label in result.train if label == 0) == [
        "alpha.png", "ants_000.jpg", "ants_001.jpg", "cmyk.jpg", "deep.png", "gray.png", "palette.png"]
    assert result.metrics()["skipped_count"] == 4


def test_open_rgb_converts_every_mode_to_8_bit_rgb(tmp_path):
    write_odd_images(tmp_path)
    for name in ("gray.png", "palette.png", "alpha.png", "cmyk.jpg", "deep.png"):
        img = open_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (48, 40), name
    assert open_rgb(tmp_path / "deep.png").getpixel((0, 0)) == (155, 155, 155)  # 40000/65535, not clipped
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert open_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)  # transparent: white
    with pytest.raises(UnreadableImage, match="^truncated image$"):
        open_rgb(tmp_path / "truncated.jpg")


def test_images_over_the_decompression_bomb_limit_are_skipped(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_class_folders(raw, {"cats": 3, "dogs": 3})
    make_image(0, seed=1, size=(80, 80)).save(raw / "cats" / "big.png")     # over the limit: a warning in PIL
    make_image(0, seed=2, size=(120, 120)).save(raw / "cats" / "huge.png")  # over twice the limit: an error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    result = make_split(raw)
    reason = "larger than the decompression-bomb limit (5000 pixels)"
    assert result.skipped == [{"path": "cats/big.png", "reason": reason}, {"path": "cats/huge.png", "reason": reason}]


# --- class names, odd paths, errors and warnings -----------------------------------------------------

def test_class_names_from_a_mapping_keyed_by_number(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw / "digits", {"000-zero": 5, "001-one": 5, "002-two": 5})
    (raw / "names.json").write_text(json.dumps({"0": "Zero", "01": "One"}))  # beside the wrapper: data/raw
    result = make_split(raw, class_names="names.json")
    assert [c["name"] for c in result.classes] == ["Zero", "One", "two"]
    assert result.warnings == [f"data.class_names: {raw / 'names.json'} has no name for 002-two; using the folder name"]


def test_class_names_from_a_mapping_keyed_by_folder(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw / "flowers" / "train", {"1": 2, "2": 2})
    write_class_folders(raw / "flowers" / "valid", {"1": 1, "2": 1}, seed=1)
    (raw / "flowers" / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved orchid"}))
    result = make_split(raw, class_names="cat_to_name.json")
    assert [c["name"] for c in result.classes] == ["pink primrose", "hard-leaved orchid"]


def test_a_missing_class_names_file_is_a_user_error(tmp_path):
    write_class_folders(tmp_path / "raw", {"cats": 2, "dogs": 2})
    with pytest.raises(UserError, match="^data.class_names: names.json: no such file"):
        make_split(tmp_path / "raw", class_names="names.json")


def test_paths_with_spaces_and_non_ascii_survive_the_csv(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw, {"fourmis rouges": 5, "abeilles d'été": 5})
    (raw / "abeilles d'été" / "abeilles d'été_000.jpg").rename(raw / "abeilles d'été" / 'ré, "sumé" 1.jpg')
    result = make_split(raw)
    splitting.write_split(result, tmp_path / "split")
    with open(tmp_path / "split" / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(row["path"], int(row["label"])) for row in rows] == result.train
    assert 'abeilles d\'été/ré, "sumé" 1.jpg' in [row["path"] for row in rows]
    assert all((raw / row["path"]).is_file() for row in rows)
    classes = json.loads((tmp_path / "split" / "classes.json").read_text(encoding="utf-8"))
    assert classes["classes"][0]["folder"] == "abeilles d'été" and classes["layout"] == "random"


def test_a_class_without_usable_images_is_a_user_error(tmp_path):
    write_class_folders(tmp_path / "raw", {"cats": 3})
    (tmp_path / "raw" / "dogs").mkdir()
    (tmp_path / "raw" / "dogs" / "dog.jpg").write_text("not a picture")
    with pytest.raises(UserError, match="class dogs has no usable images"):
        make_split(tmp_path / "raw")


def test_a_class_missing_from_val_is_a_warning(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw / "train", {"ants": 2, "bees": 2})
    write_class_folders(raw / "val", {"ants": 1}, seed=1)
    result = make_split(raw)
    assert result.warnings == ["class bees has no validation images"]
    assert result.metrics()["val"]["per_class"] == {"ants": 1, "bees": 0}


def test_duplicates_across_splits_are_reported(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw / "train", {"ants": 2, "bees": 2})
    write_class_folders(raw / "val", {"ants": 1, "bees": 1}, seed=1)
    shutil.copy(raw / "train" / "bees" / "bees_001.jpg", raw / "val" / "bees" / "copy.jpg")
    metrics = make_split(raw).metrics()
    assert metrics["duplicates_across_splits"] == [{"train": "train/bees/bees_001.jpg", "val": "val/bees/copy.jpg"}]
    assert metrics["duplicates_count"] == 1


def test_a_single_class_fails_the_stage_and_writes_nothing(tmp_path, monkeypatch, capsys):
    write_class_folders(tmp_path / RAW_DIR, {"cats": 3})
    shutil.copy2(ROOT / PARAMS_FILE, tmp_path / PARAMS_FILE)
    monkeypatch.chdir(tmp_path)
    assert run_in_process(split.main) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"split: error: {RAW_DIR}: found 1 class folder(s) (cats); need at least two"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["raw"]


# --- the real pipeline ------------------------------------------------------------------------------

def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_dvc_repro_runs_download_and_split_then_nothing(project):
    first = project.dvc("repro", "split")
    assert project.ran_stages(first.stdout) == ["download", "split"]
    train = read_csv(project.path / TRAIN_CSV)
    assert len(train) == 24 and train[0] == {"path": "train/ants/ants_000.jpg", "label": "0", "class": "ants"}
    assert len(read_csv(project.path / VAL_CSV)) == 12
    metrics = json.loads((project.path / DATA_METRICS).read_text())
    assert metrics["val"]["per_class"] == {"ants": 6, "bees": 6} and metrics["skipped_count"] == 0
    second = project.dvc("repro", "split")
    assert project.ran_stages(second.stdout) == []


@pytest.mark.skipif(not HYMENOPTERA_ZIP.exists(), reason=f"real dataset not present: {HYMENOPTERA_ZIP}")
def test_real_hymenoptera_dataset_from_the_mirror(tmp_path, monkeypatch):
    """The tutorial's ants/bees zip (default data.url) through the mirror, then split: the known counts."""
    shutil.copy2(ROOT / PARAMS_FILE, tmp_path / PARAMS_FILE)
    monkeypatch.setenv(MIRROR_ENV, str(HYMENOPTERA_ZIP.parent))
    monkeypatch.chdir(tmp_path)
    assert run_in_process(download.main) == 0
    assert run_in_process(split.main) == 0
    metrics = json.loads((tmp_path / DATA_METRICS).read_text())
    assert metrics["layout"] == "imagefolder"
    assert metrics["train"]["per_class"] == {"ants": 124, "bees": 121}
    assert metrics["val"]["per_class"] == {"ants": 70, "bees": 83}
    assert metrics["skipped"] == [] and metrics["warnings"] == []


# --- near-duplicates kept together --------------------------------------------------------------------

def write_planted_groups(raw: Path, folders: list[str], distinct: int = 20, planted: int = 8) -> list[set[str]]:
    """`distinct` generated pictures per class folder, and of `planted` of them two copies beside the
    original (JPEG re-encodes at quality 60 and 85, which the criterion always finds): the planted groups,
    as paths."""
    write_class_folders(raw, {folder: distinct for folder in folders})
    groups = []
    for folder in folders:
        for i in range(0, distinct, distinct // planted)[:planted]:
            original = raw / folder / f"{folder}_{i:03d}.jpg"
            with Image.open(original) as img:
                for quality in (60, 85):
                    img.save(original.with_name(f"{original.stem}_q{quality}.jpg"), quality=quality)
            groups.append({f"{folder}/{p.name}" for p in (raw / folder).glob(f"{original.stem}*")})
    return groups


def parts_of(result: splitting.DatasetSplit) -> dict[str, str]:
    return {path: part for part in ("train", "val", "test") for path, _ in getattr(result, part)}


@pytest.mark.parametrize("layout, folders", [("random", ["ants", "bees"]), ("prefix", ["000-one", "001-two"])])
def test_planted_near_duplicates_land_on_one_side_and_the_classes_keep_their_counts(tmp_path, layout, folders):
    """Every planted group wholly in train, val or test; each class's count in each part within one
    image of the stratified split without grouping; metrics/data.json counts the groups and the moves."""
    raw = tmp_path / "raw"
    planted = write_planted_groups(raw, folders)
    apart = make_split(raw, layout=layout, test_fraction=0.2, group_duplicates=False)
    together = make_split(raw, layout=layout, test_fraction=0.2, group_duplicates=True)
    assert any(len({parts_of(apart)[path] for path in group}) > 1 for group in planted)  # the test means something
    assert [len({parts_of(together)[path] for path in group}) for group in planted] == [1] * len(planted)
    for part in ("train", "val", "test"):
        before, after = per_class(getattr(apart, part)), per_class(getattr(together, part))
        assert all(abs(after.get(label, 0) - count) <= 1 for label, count in before.items()), (part, before, after)
    near = together.metrics()["near_duplicates"]
    moved = sum(parts_of(apart)[path] != part for path, part in parts_of(together).items())
    assert (near["groups"], near["images_in_groups"]) == (len(planted), sum(len(group) for group in planted))
    assert near["images_moved"] == moved > 0 and near["pairs_across_splits"] == 0
    assert near["images_across_splits"] == 0
    split_apart = parts_of(apart)
    across = {path for group in planted for path in group
              if split_apart[path] != "train" and any(split_apart[other] != split_apart[path] for other in group)}
    assert apart.metrics()["near_duplicates"]["pairs_across_splits"] > 0
    assert apart.metrics()["near_duplicates"]["images_across_splits"] == len(across)


def test_without_near_duplicates_grouping_changes_nothing(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw, {"ants": 30, "bees": 25})
    together = make_split(raw, layout="random", test_fraction=0.2, group_duplicates=True)
    assert together.metrics()["near_duplicates"]["groups"] == 0
    assert parts_of(together) == parts_of(make_split(raw, layout="random", test_fraction=0.2, group_duplicates=False))


def test_a_group_pulled_into_one_part_is_paid_back_by_single_images_of_its_class():
    """Two of a group in train and two in val (room for two each way): the group goes to train, and
    two single images of its class move from train to val, so that every count is as it was."""
    parts = ["train"] * 7 + ["val"] * 3 + ["train", "val"]
    labels = [0] * 10 + [1, 1]
    group = [0, 1, 7, 8]
    after = keep_together(parts, labels, [group], ("train", "val", "test"), "0")
    assert {after[index] for index in group} == {"train"}
    assert Counter(zip(labels, after, strict=True)) == Counter(zip(labels, parts, strict=True))
    assert after[10:] == parts[10:]  # the other class untouched
