"""Stage `split`: find the classes and images in data/raw, open every image once, and split them into
training, validation and (optionally) test sets.

Writes data/split/ (train.csv, val.csv and test.csv with `path,label,class` rows, paths relative to
data/raw, test.csv without rows when there is no test set; classes.json) and metrics/data.json
(counts, skipped files with the reason, duplicates, warnings).

Val selects (the kept epoch, early stopping), test only reports. Layouts (params data.layout):
  imagefolder  train/<class>/... plus val/, valid/ or test/<class>/...: the split is given (any case;
               training/ and validation/ too); with val/ (or valid/) and test/ both, test/ is the test set
  prefix       <number>-<name>/... per class (000-one): every data.val_every-th image goes to val,
               counting from the first (imgs[::k])
  random       <class>/...: a seeded stratified split, data.val_fraction of each class to val
  auto         the first two when the folders look like them, else random
prefix and random: data.test_fraction of each class (of all its images, rounded half up, at most all
but one of those left after val) then goes from the rest to test, drawn seeded by data.split_seed.
With data.group_duplicates, images whose thumbnails' perceptual hashes are close (transfer.data.grouping)
go wholly to one side, each class keeping its counts where its single images allow.
A single folder wrapping the dataset (hymenoptera_data/) is looked through, and so is the one folder
holding a train/val split beside others (docs/)."""
from __future__ import annotations

from transfer.core import params, publish
from transfer.core.files import write_json
from transfer.core.paths import DATA_METRICS, RAW_DIR, SPLIT_DIR
from transfer.core.settings import SplitSettings, section
from transfer.core.stage import log, run_main
from transfer.data.splitting import make_split, write_split

PARAMS = ("data.layout", "data.val_every", "data.val_fraction", "data.test_fraction", "data.split_seed",
          "data.class_names", "data.exclude", "data.group_duplicates")


@run_main
def main() -> None:
    data = section(params.declared(params.load(), PARAMS), "data", SplitSettings)
    split = make_split(RAW_DIR, data)
    with publish.outputs("split", (SPLIT_DIR, DATA_METRICS)) as staged:
        write_split(split, staged(SPLIT_DIR))
        write_json(staged(DATA_METRICS), split.metrics())
    log(f"{split.layout} layout, {len(split.classes)} classes: {len(split.train)} train, {len(split.val)} val, "
        f"{len(split.test)} test, {len(split.skipped)} skipped")


if __name__ == "__main__":
    main()
