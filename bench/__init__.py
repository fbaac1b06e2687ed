"""Tools that measure the pipeline, run by hand from the project root as `python -m bench.<tool>` (never by DVC):

- suite: the validation suite, every mode on several datasets and seeds against a linear probe;
  suite_datasets rebuilds its datasets from pinned public repositories;
- peer: fastai's vision_learner + fine_tune on the same backbone, weights, split and images (suite --peer pairs
  every mode with it); a bench dependency, requirements-bench.txt;
- frozen_heads: frozen's linear head trained other ways on the same features, beside the probe;
- patience: early stopping replayed on the suite's per-epoch records;
- speed: the tutorial loop against the pipeline, a training step, backbones, the loader, inference dtype;
- gpu: memory layout and precision of a training step on a CUDA GPU;
- scale: memory and time against dataset size.

probe (the linear probe the suite and frozen_heads score against) and suite_tables (the suite's printed
blocks) are modules of the suite, not tools.

`python -m bench.<tool> --help` says what each one does and prints."""
import contextlib
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_code(checkout: Path, project: Path) -> None:
    """The pipeline's code of `checkout` (stages/, and transfer/ where it has one: not before the library moved
    out of stages/) into `project`, where its stages then run as `python -m stages.<name>`."""
    for folder in ("stages", "transfer"):
        if (checkout / folder).is_dir():
            shutil.copytree(checkout / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))


@contextlib.contextmanager
def working_dir(folder: Path):
    """Run the block in `folder` (the stages' relative paths), then back."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)
