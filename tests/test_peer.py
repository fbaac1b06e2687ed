"""bench.peer: fastai's vision_learner + fine_tune on the pipeline's backbone, split and reporting images, and its
pairing with the modes (python -m bench.suite --peer). fastai is a bench dependency (requirements-bench.txt): the
tests that train it skip without it; the pairing is checked by hand without it."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from tests.conftest import make_project
from tests.imagegen import write_class_folders
from tests.test_suite import TINY, suite

NO_FASTAI = "fastai is not installed: it is a bench dependency (pip install -r requirements-bench.txt)"


def colours(tmp_path: Path) -> Path:
    data = tmp_path / "colours"
    write_class_folders(data, {"red": 8, "green": 8, "blue": 8})
    return data


def test_the_peer_trains_on_the_pipelines_weights_and_predicts_the_reporting_rows(tmp_path):
    pytest.importorskip("fastai.vision.all", reason=NO_FASTAI)
    import torch

    from bench import peer
    from transfer.data.split_files import read_classes, read_split
    from transfer.models.backbones import build_model

    project = make_project(tmp_path / "project", colours(tmp_path), modes=["frozen"])
    project.set_params(data={"test_fraction": 0.25})
    project.stage("download")
    project.stage("split")
    root, split_dir = project.path, project.path / "data/split"
    learn = peer.make_learner(root, "efficientnet_lite0", 32, batch_size=8, workers=0, seed=0)
    # fastai's body is the pipeline's pretrained EfficientNet-Lite0, tensor by tensor (cut before its pooling).
    fresh = build_model("efficientnet_lite0", 3, pretrained=True)[0].body.state_dict()
    body = learn.model[0].state_dict()
    assert len(body) == len(fresh) > 100
    assert all(a.shape == b.shape and torch.equal(a.cpu(), b) for a, b in zip(body.values(), fresh.values()))
    # Frozen as fine_tune's first epoch trains it: fastai's head and the body's BatchNorm (train_bn), no conv.
    stem_conv, stem_bn = learn.model[0][0], learn.model[0][1]
    assert not stem_conv.weight.requires_grad and stem_bn.weight.requires_grad
    assert all(p.requires_grad for p in learn.model[1].parameters()) and len(learn.splitter(learn.model)) == 2
    # The project's split: train.csv trains, val.csv validates; the classes in the pipeline's order.
    train, val = read_split("train", split_dir), read_split("val", split_dir)
    assert sorted(learn.dls.train.items["path"]) == sorted(train.paths) and len(train.paths) >= 8
    assert sorted(learn.dls.valid.items["path"]) == sorted(val.paths)
    assert list(learn.dls.vocab) == [c["name"] for c in read_classes(split_dir)]
    before = stem_conv.weight.detach().clone()
    seconds, history = peer.fine_tune(learn, 1)
    assert seconds > 0 and len(history) == 2  # the frozen epoch, then one of everything
    assert not torch.equal(before, stem_conv.weight.detach().cpu())  # the body trained in the second
    # Predictions: one per row of the reporting split (test: test_fraction), in its order, each that image's
    # own (fastai's learn.predict on the file alone).
    assert peer.reporting_split(root) == "test"
    found = peer.predict(learn, root, "test")
    rows = read_split("test", split_dir)
    assert found["paths"] == rows.paths and found["actual"] == rows.labels and len(found["predicted"]) == 6
    assert len(set(found["confidence"])) > 1  # distinct images give distinct scores: a shifted row shows
    with learn.no_bar():
        alone = [learn.predict(root / "data/raw" / path) for path in rows.paths]
    assert [int(index) for _, index, _ in alone] == found["predicted"]
    assert [round(float(probs.max()), 4) for _, _, probs in alone] == pytest.approx(found["confidence"], abs=2e-4)
    # Its CSV (evaluate's format) reads back as a mode's would, to the same right/wrong.
    peer.write_csv(found, root, tmp_path / "peer.csv")
    right = peer.peer_correct(found, root)
    assert peer.mode_correct(tmp_path / "peer.csv", root) == right
    assert right == "".join("1" if a == p else "0" for a, p in zip(rows.labels, found["predicted"]))


def hand_project(tmp_path: Path) -> tuple[Path, list[str]]:
    """data/split of 10 test images (labels 0, 1 alternating) and the classes, by hand."""
    split = tmp_path / "data/split"
    split.mkdir(parents=True)
    (split / "classes.json").write_text(json.dumps({"classes": [{"name": "ant", "folder": "ant"},
                                                                 {"name": "bee", "folder": "bee"}]}))
    paths = [f"img{i}.jpg" for i in range(10)]
    for name, rows in (("train", paths[:2]), ("val", paths[:2]), ("test", paths)):
        (split / f"{name}.csv").write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(rows)))
    return tmp_path, paths


def predictions(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "actual", "predicted", "confidence"])
        writer.writerows([(p, a, b, "0.9") for p, a, b in rows])
    return path


def test_a_mode_against_the_peer_by_hand(tmp_path):
    from bench import peer

    project, paths = hand_project(tmp_path)
    names = ["ant", "bee"]
    mode_right, peer_right = set(range(8)), {0, 1, 2, 8}  # only the mode: 3-7 (5); only the peer: 8 (1)
    mode_rows = [(p, names[i % 2], names[(i + (i not in mode_right)) % 2]) for i, p in enumerate(paths)]
    # Written in another order: the right/wrong still comes in the split's row order.
    csv_path = predictions(tmp_path / "frozen.csv", mode_rows[::-1])
    assert peer.mode_correct(csv_path, project) == "1111111100"
    found = {"paths": paths, "actual": [i % 2 for i in range(10)],
             "predicted": [(i + (i not in peer_right)) % 2 for i in range(10)]}
    assert peer.peer_correct(found, project) == "1110000010"
    suite_found = {"modes": {"frozen": {"runs": [{"seed": 0, "correct": "1111111100", "train_seconds": 30.0}]}},
                   "peer": {"peer@5": {"runs": [{"seed": 0, "correct": "1110000010", "train_seconds": 12.0},
                                                {"seed": 1, "correct": "1111111111", "train_seconds": 12.0}]}}}
    [pair] = peer.pairs(suite_found)  # seed 1 has no mode run to pair with
    assert (pair["mode"], pair["peer"], pair["seed"], pair["images"]) == ("frozen", "peer@5", 0, 10)
    assert (pair["mode_only"], pair["peer_only"]) == (5, 1)
    assert pair["p"] == pytest.approx(2 * (1 + 6) / 2**6)  # two-sided binomial: 2 P(X <= 1), X ~ B(6, 1/2)
    assert pair["mode_score"]["accuracy"] == 0.8 and pair["peer_score"]["accuracy"] == 0.4
    # Wilson 95% of 8/10 and 4/10 (the textbook values).
    assert pair["mode_score"]["interval"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert pair["peer_score"]["interval"] == pytest.approx([0.1682, 0.6873], abs=1e-4)
    assert (pair["mode_train_seconds"], pair["peer_train_seconds"], pair["time_ratio"]) == (30.0, 12.0, 2.5)
    title, header, line = peer.lines({"colours": {**suite_found, "paired": [pair]}})[1:]
    assert title.startswith("against the peer") and header.split()[:5] == ["dataset", "mode", "peer", "seed", "images"]
    assert line.split() == ["colours", "frozen", "peer@5", "0", "10", "0.8000", "[0.490-0.943]", "0.4000",
                            "[0.168-0.687]", "5", "1", "p", "=", "0.22", "30.0", "12.0", "2.50"]


def test_rows_that_do_not_line_up_are_refused(tmp_path):
    from bench import peer

    project, paths = hand_project(tmp_path)
    rows = [(p, "ant" if i % 2 == 0 else "bee", "ant") for i, p in enumerate(paths)]
    cases = {"missing": rows[:-1], "twice": rows + rows[:1], "other": [("x.jpg", "ant", "ant")] + rows[1:],
             "label": [(rows[0][0], "bee", "ant")] + rows[1:]}
    for name, bad in cases.items():
        with pytest.raises(peer.PeerError):
            peer.mode_correct(predictions(tmp_path / f"{name}.csv", bad), project)
    found = {"paths": paths[1:] + paths[:1], "actual": [i % 2 for i in range(10)], "predicted": [0] * 10}
    with pytest.raises(peer.PeerError, match="not the reporting split's rows in order"):
        peer.peer_correct(found, project)  # shifted by one row
    with pytest.raises(peer.PeerError, match="not the same images"):
        peer.versus({"correct": "1" * 10, "train_seconds": 1.0}, {"correct": "1" * 9, "train_seconds": 1.0})


def test_a_peer_run_already_in_the_project_is_read_not_run_again(tmp_path):
    """A resumed suite: PROJECT/peer/peer@N-seedS.json, whole (bench.peer writes it last, by renaming), stands."""
    from bench import peer

    project, paths = hand_project(tmp_path)
    (project / "peer").mkdir()
    run = {"seed": 0, "epochs": 5, "accuracy": 0.4, "train_seconds": 12.0, "paths": paths,
           "actual": [i % 2 for i in range(10)], "predicted": [(i + (i not in {0, 1, 2, 8})) % 2 for i in range(10)]}
    (project / "peer/peer@5-seed0.json").write_text(json.dumps(run))
    found = peer.run_in(project, 5, 0, peer.BATCH_SIZE)  # bench.peer on this hand-made project would fail
    assert found["correct"] == "1110000010" and found["train_seconds"] == 12.0 and "paths" not in found
    suite_found = {"modes": {"frozen": {"runs": [{"seed": 0, "correct": "1" * 10, "train_seconds": 1.0}]}},
                   "peer": {"peer@5": {"runs": [found]}}}
    # Kept runs are not run again; the pairs are made anew for the mode runs a resumed suite added.
    peer.add_rows(suite_found, project, {"peer@5": 5}, [0], peer.BATCH_SIZE, lambda runs: {"runs": runs},
                  lambda found: None)
    assert suite_found["peer"]["peer@5"]["runs"] == [found] and len(suite_found["paired"]) == 1
    with pytest.raises(peer.PeerError, match="bench.peer failed"):
        peer.run_in(project, 5, 0, 32)  # another batch size is another run: bench.peer runs, and fails here


def test_peer_epochs_by_hand():
    from bench import peer
    from bench.suite import set_key

    def wanted(peer_flag, epochs, sets=()):
        return peer.wanted(argparse.Namespace(peer=peer_flag, peer_epochs=epochs, sets=list(sets)), set_key)
    assert wanted(False, None) == {}
    assert wanted(True, None) == {"peer@5": 5}
    assert wanted(False, ["5", "finetune", "5"], ["modes.finetune.epochs=3"]) == {"peer@5": 5, "peer@3": 3}
    with pytest.raises(peer.PeerError, match="--peer-epochs 0: expected a whole number >= 1 or finetune"):
        wanted(False, ["0"])


def test_suite_with_the_peer_pairs_each_mode_with_it(tmp_path):
    pytest.importorskip("fastai.vision.all", reason=NO_FASTAI)
    out = tmp_path / "suite.json"
    proc = suite(str(colours(tmp_path)), "--modes", "frozen", "--seeds", "0", "--work", str(tmp_path / "work"),
                 "--json", str(out), "--peer-epochs", "1", "--peer-batch-size", "8", "--set", *TINY)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(out.read_text())["colours"]
    mode_run, peer_run = found["modes"]["frozen"]["runs"][0], found["peer"]["peer@1"]["runs"][0]
    assert peer_run["epochs"] == 1 and peer_run["batch_size"] == 8 and len(peer_run["history"]) == 2
    assert len(mode_run["correct"]) == len(peer_run["correct"]) == 6  # the test split's 6 images
    assert peer_run["accuracy"] == peer_run["correct"].count("1") / 6
    assert mode_run["accuracy"] == pytest.approx(mode_run["correct"].count("1") / 6)
    [pair] = found["paired"]
    both = list(zip(mode_run["correct"], peer_run["correct"]))
    assert (pair["mode_only"], pair["peer_only"]) == (both.count(("1", "0")), both.count(("0", "1")))
    assert pair["time_ratio"] == pytest.approx(mode_run["train_seconds"] / peer_run["train_seconds"])
    project = Path(found["project"])
    assert (project / "peer/peer@1-seed0-bs8.csv").is_file()  # not fastai's batch size: named in the file
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("colours")][:2] == [["colours", "frozen"],
                                                                                      ["colours", "peer@1"]]
    assert any(line.startswith("against the peer") for line in lines)
    assert lines[-1].split()[:5] == ["colours", "frozen", "peer@1", "0", "6"]
    bad = suite(str(tmp_path), "--peer-epochs", "ten", "--work", str(tmp_path / "w"))
    assert bad.returncode == 2 and bad.stderr.strip() == ("suite: error: --peer-epochs ten: expected a whole number "
                                                          ">= 1 or finetune")
