"""Check the checkout before any DVC command touches it: `python -m stages.check_tree && dvc repro`.

Refuses, in one line, a symbolic link or special file at, above or inside any output of dvc.yaml and
the pipeline's and DVC's working folders, and a file committed where only DVC or a run writes: DVC
deletes and restores outputs through such links before any stage can refuse them
(transfer/core/tree_guard.py, docs/reliability.md). Not a DVC stage: it runs before DVC does."""
from __future__ import annotations

from transfer.core.stage import log, run_main
from transfer.core.tree_guard import check_tree


@run_main
def main() -> None:
    checked = check_tree()
    log(f"check_tree: {len(checked)} output and working paths hold no link, special file or committed scratch")


if __name__ == "__main__":
    main()
