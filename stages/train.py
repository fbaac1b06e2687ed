"""Stage train@<mode>: train one transfer mode, write models/modes/<mode>.pt and dvclive/<mode>/ (as one set)."""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os

from transfer.core import params as params_module
from transfer.core import publish
from transfer.core.code_deps import code_digest
from transfer.core.errors import UserError, out_of_memory
from transfer.core.files import check_plain_tree
from transfer.core.git_tree import refuse_tracked, working_tree_key
from transfer.core.paths import (
    CLASSES_JSON,
    RESUME_DIR,
    TRAIN_CSV,
    VAL_CSV,
    live_dir,
    model_file,
    resume_dir,
    resume_state,
    running_live_dir,
)
from transfer.core.settings import ModeSettings, mode_settings
from transfer.core.stage import log, run_main
from transfer.data.split_files import read_classes
from transfer.models.backbones import check_arch, count_params
from transfer.models.checkpoints import checkpoint_meta, save_checkpoint
from transfer.training.distributed import LAUNCHED, check_nproc, launch, start, stop
from transfer.training.live_log import LiveLog, augmented_batch_grid
from transfer.training.loop import ResumeState, SharedResume
from transfer.training.run import run_training

PARAMS = ("model", "train", "modes.{mode}")  # as dvc.yaml's train stage declares them


def fingerprint(settings: ModeSettings) -> str:
    """What a resumable state must match: the mode's settings, the exact split and the training code,
    keyed with this working tree's secret (git_tree.working_tree_key): all three are predictable, and a
    state computed elsewhere with them must not pass for this tree's own."""
    digest = hashlib.sha256(json.dumps(settings.as_dict(), sort_keys=True).encode())
    for path in (TRAIN_CSV, VAL_CSV, CLASSES_JSON):
        digest.update(path.read_bytes())
    digest.update(code_digest("stages.train").encode())
    return hmac.new(working_tree_key(), digest.digest(), hashlib.sha256).hexdigest()


@run_main(resumes=True)
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train one transfer mode (a row of params.yaml `modes`).")
    parser.add_argument("mode")
    mode = parser.parse_args(argv).mode
    check_plain_tree(resume_dir(mode))  # .resume/<mode>: DVCLive empties and fills its dvclive/ as training runs
    refuse_tracked([RESUME_DIR], "only a run of this working tree keeps its resumable state")
    params = params_module.declared(params_module.load(arch_check=check_arch), PARAMS, mode)
    settings = mode_settings(params, mode)
    classes = read_classes()
    if settings.nproc > 1 and LAUNCHED not in os.environ:  # this stage again, as nproc processes
        check_nproc(settings.nproc, settings.device)
        working_tree_key()  # made here once, so that the ranks only read it: rank 0 alone writes in the project
        launch("stages.train", [mode], settings.nproc)
        return
    strategy = start(settings.device)
    try:
        resume = (ResumeState if strategy.is_main else SharedResume)(resume_state(mode), fingerprint(settings))
        live = LiveLog(mode) if strategy.is_main else None  # only rank 0 writes files
        model, data, result = run_training(settings, len(classes), resume, on_epoch=live and live.epoch,
                                           strategy=strategy)
    except (RuntimeError, MemoryError) as err:  # CUDA's, MPS's or the CPU's allocator gave up
        if not out_of_memory(err):
            raise
        batch = settings.batch_size
        raise UserError(f"out of {out_of_memory(err)} memory at train.batch_size {batch}; try a smaller one, "
                        f"e.g. dvc exp run -S ++modes.{mode}.batch_size={max(1, batch // 2)}") from None
    stop(strategy)
    if not strategy.is_main:
        return
    model.load_state_dict(result.best_state)
    meta = checkpoint_meta(mode, settings, classes, data.preprocess, result, count_params(model)[1])
    meta["world_size"] = strategy.world_size  # evaluate records it in metrics/<mode>.json
    live.end(augmented_batch_grid(data, settings, meta["class_names"]))
    with publish.outputs(f"train@{mode}", (model_file(mode), live_dir(mode))) as staged:
        os.replace(running_live_dir(mode), staged(live_dir(mode)))
        save_checkpoint(staged(model_file(mode)), model.cpu(), meta)
    publish.remove(resume_dir(mode))
    log(f"train@{mode}: best val accuracy {result.best_accuracy:.4f} at epoch {result.best_epoch}, "
        f"{result.train_seconds:.1f} s, peak memory {meta['peak_memory_mib']} MiB")


if __name__ == "__main__":
    main()
