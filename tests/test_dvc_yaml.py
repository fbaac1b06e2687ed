"""dvc.yaml declares what each stage really reads: every project module its command runs (imports
followed to any depth, transfer.core.code_deps) and every param it reads (the stage module's PARAMS, the only
params transfer.core.params.declared lets it see). A missing dep would let DVC skip a stage whose code changed."""
from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests.conftest import ROOT
from transfer.core.code_deps import stage_code_files, stage_modules

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
STAGES = DVC_YAML["stages"]


def body(name: str) -> dict:
    stage = STAGES[name]
    return stage.get("do", stage)


def stage_module(name: str) -> str:
    (module,) = re.findall(r"python -m (stages\.\w+)", body(name)["cmd"])
    return module


def declared_params(module: str) -> list[str]:
    """The stage module's PARAMS, read from its source (no import needed)."""
    tree = ast.parse((ROOT / "stages" / f"{module.split('.')[1]}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PARAMS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_runs(name):
    deps = [d for d in body(name).get("deps", []) if str(d).endswith(".py")]
    assert sorted(deps) == stage_code_files(stage_module(name))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_declares_exactly_the_params_it_reads(name):
    in_yaml = [str(p).replace("${key}", "{mode}") for p in body(name).get("params", [])]
    assert sorted(in_yaml) == sorted(declared_params(stage_module(name)))


def test_imports_are_followed_into_functions_and_through_the_package():
    """The closure sees a lazy import inside a function (predict loads torch only when it classifies)
    and the package's own __init__, which `python -m` runs first."""
    modules = stage_modules("stages.predict")
    assert "transfer.models.checkpoints" in modules and "stages" in modules
    assert "transfer.training.loop" not in stage_modules("stages.evaluate")  # evaluate trains nothing


def test_the_closure_reaches_modules_imported_only_indirectly():
    """train imports training, which imports sources, which imports devices: all of them are train's code."""
    assert {"transfer/training/loop.py", "transfer/training/sources.py",
            "transfer/core/devices.py"} <= set(stage_code_files("stages.train"))
