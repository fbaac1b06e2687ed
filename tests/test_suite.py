"""python -m bench.suite (and bench.frozen_heads, bench.patience) on a tiny generated dataset: one mode, one seed,
tiny settings, real stage processes."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import ROOT, env_with_venv
from tests.imagegen import write_class_folders

TINY = ["train.epochs=1", "train.image_size=32", "train.batch_size=8", "train.cached_views=1", "train.workers=0",
        "modes.frozen.epochs=2", "modes.frozen.patience=1", "pack.short_side=40", "data.test_fraction=0.25"]


def bench(tool: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m bench.<tool> ARGS` from the project root, as the docs run it."""
    return subprocess.run([sys.executable, "-m", f"bench.{tool}", *args], cwd=ROOT, env=env_with_venv(),
                          capture_output=True, text=True, timeout=timeout)


def suite(*args: str) -> subprocess.CompletedProcess:
    return bench("suite", *args)


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory) -> SimpleNamespace:
    """One suite run shared by the tests below: frozen for 12 epochs without early stopping (lr 1.0: val loss
    turns up soon), and two variants in the same project: `fewer` (1 epoch) and `p2` (patience 2 on val loss)."""
    root = tmp_path_factory.mktemp("suite")
    data = root / "colours"
    write_class_folders(data, {"red": 8, "green": 8, "blue": 8})
    work, out = root / "work", root / "suite.json"
    proc = suite(str(data), "--modes", "frozen", "--seeds", "0", "--work", str(work), "--json", str(out),
                 "--set", *TINY, "modes.frozen.epochs=12", "modes.frozen.lr=1.0", "modes.frozen.patience=null",
                 "--variant", "fewer modes.frozen.epochs=1",
                 "--variant", "p2 modes.frozen.patience=2 modes.frozen.stop_on=val_loss")
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(proc=proc, data=data, work=work, out=out, found=json.loads(out.read_text())["colours"])


def test_suite_prints_accuracy_spread_time_and_the_linear_probe(suite_run):
    proc, work, found = suite_run.proc, suite_run.work, suite_run.found
    assert found["evaluated_on"] == "test" and 0 <= found["probe"] <= 1  # test_fraction: 2 of each class's 8
    row = found["modes"]["frozen"]
    assert [run["seed"] for run in row["runs"]] == [0] and row["std"] == 0 and row["runs"][0]["stopped_epoch"] is None
    assert row["mean"] == row["runs"][0]["accuracy"] and row["train_seconds"] > 0
    # Each run's epochs (val loss, accuracy, seconds), one value each; the kept epoch has the best val accuracy.
    run = row["runs"][0]
    assert len(run["val_loss"]) == len(run["val_acc"]) == len(run["epoch_seconds"]) == 12
    assert run["val_acc"][run["best_epoch"] - 1] == max(run["val_acc"])
    assert Path(found["project"]).parent == work and not list(ROOT.glob("suite-*"))
    # The variants ran in the same project (one pack, one probe), each with its own setting on top of --set.
    assert [run["seed"] for run in found["modes"]["frozen+fewer"]["runs"]] == [0]
    assert len(found["modes"]["frozen+fewer"]["runs"][0]["val_loss"]) == 1
    assert len(list(work.iterdir())) == 1
    # The project is left with the settings of the run (--set), not of its last variant: a resumed suite checks them.
    last = yaml.safe_load((Path(found["project"]) / "params.yaml").read_text())
    assert last["modes"]["frozen"]["patience"] is None and last["modes"]["frozen"]["epochs"] == 12
    assert last["pack"]["short_side"] == 40
    runs, overall, against_probe = (block.splitlines() for block in proc.stdout.strip().split("\n\n"))
    header, line, fewer_line, p2_line = runs
    overall_header, *overall = overall
    assert header.split()[:4] == ["dataset", "mode", "on", "seeds"] and "probe" in header
    assert line.split()[:4] == ["colours", "frozen", "test", "1"]
    assert fewer_line.split()[:2] == ["colours", "frozen+fewer"] and p2_line.split()[:2] == ["colours", "frozen+p2"]
    assert float(line.split()[9]) == round(found["probe"], 4)
    assert overall_header.split()[:3] == ["over", "the", "datasets"]
    assert [o.split()[:2] for o in overall] == [["frozen", "1"], ["frozen+fewer", "1"], ["frozen+p2", "1"]]
    assert overall[0].split()[5] == ("1/1" if row["mean"] > found["probe"] else "0/1")
    # The probe image by image, in the test split's order, and every run paired with it on those images.
    probe = found["probe_correct"]
    assert len(probe) == 6 and found["probe"] == probe.count("1") / 6
    assert [(p["mode"], p["seed"], p["images"]) for p in found["probe_paired"]] == [
        ("frozen", 0, 6), ("frozen+fewer", 0, 6), ("frozen+p2", 0, 6)]
    pair, both = found["probe_paired"][0], list(zip(run["correct"], probe))
    assert (pair["mode_only"], pair["probe_only"]) == (both.count(("1", "0")), both.count(("0", "1")))
    assert pair["probe_accuracy"] == found["probe"] and pair["mode_accuracy"] == pytest.approx(row["mean"])
    assert against_probe[0] == "against the linear probe, the same images: images only the mode / only the " \
                               "probe gets right, exact McNemar; accuracy [95% Wilson]"
    assert [line.split()[:4] for line in against_probe[2:]] == [["colours", r, "0", "6"]
                                                                for r in ("frozen", "frozen+fewer", "frozen+p2")]
    assert against_probe[2].split()[8:10] == [str(pair["mode_only"]), str(pair["probe_only"])]


def test_a_resumed_suite_keeps_what_it_has_and_runs_only_what_it_lacks(suite_run, tmp_path):
    from bench import suite as suite_module

    earlier = json.loads(suite_run.out.read_text())
    kept = copy.deepcopy(earlier["colours"])
    del earlier["colours"]["modes"]["frozen+fewer"]
    resume, out = tmp_path / "earlier.json", tmp_path / "resumed.json"
    resume.write_text(json.dumps(earlier))
    frozen_set = ["modes.frozen.epochs=12", "modes.frozen.lr=1.0", "modes.frozen.patience=null"]
    metrics = Path(kept["project"]) / "metrics/frozen.json"
    before = metrics.stat().st_mtime_ns
    proc = suite(str(suite_run.data), "--modes", "frozen", "--seeds", "0", "--work", str(tmp_path / "work"),
                 "--resume", str(resume), "--json", str(out), "--set", *TINY, *frozen_set,
                 "--variant", "fewer modes.frozen.epochs=1")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(out.read_text())["colours"]
    assert found["project"] == kept["project"] and not list((tmp_path / "work").iterdir())  # no new project
    assert found["modes"]["frozen"] == kept["modes"]["frozen"]
    assert found["modes"]["frozen+p2"] == kept["modes"]["frozen+p2"]
    assert found["probe_correct"] == kept["probe_correct"]
    redone = found["modes"]["frozen+fewer"]["runs"]
    assert [r["seed"] for r in redone] == [0] and len(redone[0]["val_loss"]) == 1
    assert metrics.stat().st_mtime_ns != before  # it ran again, once: frozen and frozen+p2 are kept as they were
    assert len(found["probe_paired"]) == 3
    assert [line.split()[1] for line in proc.stdout.splitlines()[1:4]] == ["frozen", "frozen+p2", "frozen+fewer"]
    # Other settings than the earlier run's: refused, naming the first that differs (main prints it as one line).
    project = Path(kept["project"])
    with pytest.raises(suite_module.SuiteError) as refused:
        suite_module.resumed_project(project, suite_run.data, ["frozen"], [*TINY, *frozen_set[:2]])
    assert str(refused.value) == (
        f"--resume: colours: modes.frozen.patience in {project}/params.yaml is not what this run sets; the same "
        "--modes and --set as the earlier run, or run the dataset afresh")
    for text, why in (('{"a": 1}', "not a bench.suite --json file"), ("{", "Expecting")):
        resume.write_text(text)
        with pytest.raises(suite_module.SuiteError, match=f"^--resume {resume}: .*{why}"):
            suite_module.read_results(resume)


def test_suite_bad_input_is_one_line(tmp_path):
    proc = suite(str(tmp_path / "nowhere"), "--seeds", "0")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"suite: error: {tmp_path / 'nowhere'}: "
                                                                          "no such folder or archive"]
    proc = suite(str(tmp_path), "--modes", "nosuch", "--work", str(tmp_path / "w"))
    assert proc.returncode == 2 and "--modes: unknown mode nosuch" in proc.stderr and "Traceback" not in proc.stderr
    proc = suite(str(tmp_path), "--variant", "small pack.short_side=40", "--work", str(tmp_path / "w"))
    assert proc.returncode == 2 and proc.stderr.strip() == ("suite: error: --variant small: pack.short_side=40: "
                                                            "data.* and pack.* go in --set (one pack per dataset)")


def test_frozen_heads_prints_each_way_of_training_the_head_beside_the_probe(tmp_path):
    """bench.frozen_heads: frozen's head trained three ways on the pipeline's own cached features."""
    data = tmp_path / "colours"
    write_class_folders(data, {"red": 8, "green": 8, "blue": 8})
    proc = frozen_heads(str(data), "--seeds", "0", "--work", str(tmp_path / "work"), "--set", *TINY,
                        "--grid", "lr=0.1,0.3", "epochs=2")
    assert proc.returncode == 0, proc.stderr
    header, line, mean, above, _, grid_title, grid_header, *grid = proc.stdout.splitlines()
    assert header.split() == ["dataset", "on", "probe", "row", "standardised", "lbfgs"]
    name, split, *numbers = line.split()
    assert (name, split) == ("colours", "test") and all(0 <= float(n) <= 1 for n in numbers)
    assert mean.split()[1:] == numbers  # one dataset: its own numbers are the means
    assert above.split()[-3:] == [f"{int(float(n) > float(numbers[0]))}/1" for n in numbers[1:]]
    # The grid: both heads at lr 0.1 and 0.3 for 2 epochs, best mean first; TINY's row (lr 0.1, 2 epochs) is
    # the grid's row at lr 0.1, the same training, so the same score.
    assert grid_title.startswith("grid: 4 settings") and grid_header.split()[:2] == ["setting", "colours"]
    settings = {" ".join(g.split()[:3]): float(g.split()[3]) for g in grid}
    assert sorted(settings) == sorted(f"{h} lr={lr} epochs=2" for h in ("row", "standardised") for lr in (0.1, 0.3))
    assert list(settings.values()) == sorted(settings.values(), reverse=True)
    assert settings["row lr=0.1 epochs=2"] == float(numbers[1])
    assert settings["standardised lr=0.1 epochs=2"] == float(numbers[2])


def frozen_heads(*args: str) -> subprocess.CompletedProcess:
    return bench("frozen_heads", *args)


def test_leave_one_dataset_out_by_hand():
    from bench import frozen_heads, suite_tables
    scores = {"a": {"x": 0.9, "y": 0.5, "z": 0.5}, "b": {"x": 0.1, "y": 0.6, "z": 0.6},
              "c": {"x": 0.5, "y": 0.6, "z": 0.55}}
    # Held out x: b has the best mean on y and z (0.6); held out y or z: a (0.7 on the other two).
    assert suite_tables.leave_one_out(scores, ["x", "y", "z"]) == {"x": "b", "y": "a", "z": "a"}
    # The suite's block: frozen's two rows on three datasets; scratch has one row, so no block of its own.
    results = {d: {"modes": {"frozen": {"mean": scores["a"][d]}, "frozen+b": {"mean": scores["b"][d]},
                             "scratch": {"mean": 0.5}}} for d in ("x", "y", "z")}
    title, x, y, z, mean = suite_tables.held_out(results).splitlines()
    assert title.startswith("leave one dataset out, frozen:")
    assert [line.split()[:3] for line in (x, y, z)] == [["x", "frozen+b", "0.1000"], ["y", "frozen", "0.5000"],
                                                         ["z", "frozen", "0.5000"]]
    assert mean.split()[:4] == ["mean", "held", "out", f"{(0.1 + 0.5 + 0.5) / 3:.4f}"] and "frozen 0.6333" in mean
    assert frozen_heads.parse_grid(["lr=0.1,0.3", "epochs=5"]) == [{"lr": 0.1, "epochs": 5}, {"lr": 0.3, "epochs": 5}]


def test_frozen_heads_bad_grid_is_one_line(tmp_path):
    for item, why in (("momentum=0.5", "expected KEY=V1,V2,... with KEY one of lr, weight_decay, epochs"),
                      ("epochs=5,ten", "5,ten is not a list of ints")):
        proc = frozen_heads(str(tmp_path), "--grid", item)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
            f"python -m bench.frozen_heads: error: --grid: {item}: {why}")


def test_patience_replay_rules_by_hand():
    from bench import patience
    loss = [1.0, 0.8, 0.9, 0.8, 0.7, 0.75, 0.76, 0.77]
    assert patience.stop_epoch(loss, 2, "val_loss") == 4  # 0.9 and a tie (0.8) are not better
    assert patience.stop_epoch(loss, 3, "val_loss") == 8  # the 0.7 at 5 resets it; 6, 7, 8 are stale
    assert patience.stop_epoch(loss, None, "val_loss") == 8
    assert patience.stop_epoch([0.5, 0.6, 0.6, 0.7], 2, "val_acc") == 4
    # The kept epoch: the best accuracy up to the stop, a tie going to the lower loss, then the earlier epoch.
    acc = [0.5, 0.7, 0.7, 0.6, 0.7, 0.9]
    assert patience.kept_epoch(acc, [1.0, 0.9, 0.8, 0.7, 0.8, 0.5], 5) == 3
    assert patience.kept_epoch(acc, [1.0, 0.8, 0.8, 0.7, 0.8, 0.5], 5) == 2
    assert patience.kept_epoch(acc, [1.0, 0.8, 0.8, 0.7, 0.8, 0.5], 6) == 6


def test_patience_replayed_from_a_longer_run_matches_a_run_that_stopped(suite_run):
    """One run without early stopping, replayed with a patience, stops and keeps where a real run with that
    patience (same seed, same project) stopped and kept."""
    found = suite_run.found["modes"]
    full, stopped = found["frozen"]["runs"][0], found["frozen+p2"]["runs"][0]
    assert len(full["val_loss"]) == 12 and stopped["stopped_epoch"] < 12  # it did stop early
    assert full["val_loss"][:stopped["stopped_epoch"]] == stopped["val_loss"]  # the same epochs up to the stop
    from bench import patience
    replayed = patience.replay(full, 2, "val_loss")
    assert (replayed["stopped"], replayed["kept"]) == (stopped["stopped_epoch"], stopped["best_epoch"])
    printed = bench("patience", str(suite_run.out), "--patience", "2", "--stop-on", "val_loss", timeout=60)
    assert printed.returncode == 0, printed.stderr
    line = next(row for row in printed.stdout.splitlines() if row.split()[:4] == ["colours", "frozen", "val_loss", "2"])
    assert line.split()[6:8] == [str(stopped["stopped_epoch"]), str(stopped["best_epoch"])]


def test_patience_bad_input_is_one_line(tmp_path):
    def patience(*args):
        return bench("patience", *args, timeout=60)
    other, old, good = tmp_path / "other.json", tmp_path / "old.json", tmp_path / "good.json"
    other.write_text('{"a": 1}')
    good.write_text(json.dumps({"colours": {"modes": {"scratch": {"runs": [
        {"val_loss": [1.0], "val_acc": [0.5], "epoch_seconds": [1.0]}]}}}}))
    assert patience(str(good)).returncode == 0
    old.write_text(json.dumps({"colours": {"modes": {"scratch": {"runs": [{"seed": 0, "accuracy": 0.5}]}}}}))
    for args, message in [((str(other),), f"{other}: not a bench.suite --json file"),
                          ((str(old),), f"{old}: colours scratch: no per-epoch record (made before bench.suite "
                                        "kept one)"),
                          ((str(good), "--patience", "0"), "--patience 0: must be a whole number >= 1 or null"),
                          ((str(tmp_path / "nowhere.json"),), "No such file or directory")]:
        proc = patience(*args)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
        assert proc.stderr.startswith("patience: error: ") and message in proc.stderr, proc.stderr


def test_backbone_rows_are_the_rows_on_another_backbone_and_pass_the_params_check(tmp_path):
    """bench.backbone_rows: each named row again on Lite1 and Lite2, its other settings unchanged; the
    params a suite project gets with them pass the pipeline's own check."""
    from bench.backbone_rows import assignments
    from bench.suite import suite_params
    from transfer.core import params as params_module

    rows = ["frozen_lite1", "frozen_lite2"]
    params = suite_params(tmp_path, ["frozen", *rows], assignments(["frozen"]))
    checked = params_module.check(params)
    for row in rows:
        assert checked["modes"][row]["arch"] == f"efficientnet_{row.split('_')[-1]}"
        assert {**checked["modes"][row], "arch": None} == {**checked["modes"]["frozen"], "arch": None}
    assert checked["pack"]["short_side"] >= int(260 / 0.89)  # Lite2: 260 px at crop_pct 0.89, resized by floor


def test_backbone_rows_of_an_unknown_mode_are_one_line(capsys):
    from bench.backbone_rows import main

    assert main(["nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown mode nosuch" in err
