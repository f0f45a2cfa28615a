"""Stage keys: an old run resumes after kd-edge changes, and a changed stage is redone with what
follows it, nothing before. Run in-process on a copy of the tiny run made by the real `kd-edge run`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import Field

import kd_edge
from kd_edge import stagekeys
from kd_edge.config import Recipe, load_recipe
from kd_edge.evaluate.config import EvaluateConfig
from kd_edge.pipeline import run_pipeline
from kd_edge.preflight import resolve
from kd_edge.report.config import ReportConfig
from kd_edge.stages import STAGE_NAMES

BEFORE_BENCH = [n for n in STAGE_NAMES[:STAGE_NAMES.index("bench")] if n not in ("prepare", "generate", "baseline")]  # an encoder: none of these


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def _recipe(path: Path, cls: type[Recipe] = Recipe) -> Recipe:
    recipe = resolve(load_recipe(path)[0])
    # a later kd-edge reads the same recipe file: what it sets, the rest left to that version's defaults
    return cls.model_validate(recipe.model_dump(mode="json", exclude_defaults=True)) if cls is not Recipe else recipe


class _LaterEvaluate(EvaluateConfig):
    new_knob: float = Field(0.5, description="a setting a later kd-edge adds, its default keeping what the code did")


class _LaterRecipe(Recipe):
    """The recipe model of a later kd-edge: two new fields with defaults, one top-level, one nested."""

    later_option: int = Field(3, description="a new top-level setting")
    evaluate: _LaterEvaluate = Field(default_factory=_LaterEvaluate)


class _OtherTitle(ReportConfig):
    title: str | None = Field("a default title", description="a default changed by a later kd-edge")


class _ChangedDefaultRecipe(Recipe):
    report: _OtherTitle = Field(default_factory=_OtherTitle)


def test_fields_added_later_with_defaults_leave_every_stage_of_an_old_run_current(finished_run, tmp_path):
    recipe_path, run, _ = finished_run
    run = _copy(run, tmp_path / "run")
    result = run_pipeline(_recipe(recipe_path, _LaterRecipe), run, progress=False)
    assert result.ran == [] and result.skipped[0] == "data" and result.skipped[-1] == "gate"


def test_a_changed_default_redoes_the_stages_that_read_it(finished_run, tmp_path):
    recipe_path, run, _ = finished_run
    run = _copy(run, tmp_path / "run")
    result = run_pipeline(_recipe(recipe_path, _ChangedDefaultRecipe), run, progress=False)
    assert result.ran == ["report", "gate"]
    assert "a default title" in (run / "report.html").read_text()


@pytest.fixture
def package_copy(tmp_path, monkeypatch) -> Path:
    """A copy of kd-edge's source that the stage keys are computed from (the code that runs is the real one)."""
    root = tmp_path / "kd_edge_src"
    shutil.copytree(Path(kd_edge.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    monkeypatch.setattr(stagekeys, "PACKAGE_ROOT", root)
    return root


def test_a_changed_stage_is_redone_with_the_stages_after_it_and_nothing_before(finished_run, tmp_path, package_copy):
    recipe_path, run, _ = finished_run
    run = _copy(run, tmp_path / "run")
    source = package_copy / "bench" / "run.py"
    source.write_text(source.read_text() + "\n\ndef _a_new_helper() -> int:\n    return 1\n")
    result = run_pipeline(_recipe(recipe_path), run, progress=False)
    assert result.ran == ["bench", "report", "gate"]
    assert result.skipped == BEFORE_BENCH  # data, teacher, student, distill, evaluate, export, verify


def test_a_comment_is_not_a_code_change(finished_run, tmp_path, package_copy):
    recipe_path, run, _ = finished_run
    run = _copy(run, tmp_path / "run")
    source = package_copy / "evaluate" / "run.py"
    source.write_text("# a comment and a blank line change no output\n\n" + source.read_text())
    assert run_pipeline(_recipe(recipe_path), run, progress=False).ran == []


def test_configuration_modules_are_not_code_but_stage_modules_are():
    modules = stagekeys.code_modules(["kd_edge.evaluate.run"])
    assert "kd_edge.evaluate.run" in modules and "kd_edge.tasks.kinds" in modules
    assert not any(m == "kd_edge.config" or m.endswith(".config") for m in modules)
    assert "kd_edge.errors" not in modules and "kd_edge.bench.run" not in modules


def test_a_run_made_before_stage_keys_recorded_code_is_refused_then_redone_with_resume(finished_run, tmp_path):
    import json

    from kd_edge.errors import ConfigError

    recipe_path, run, _ = finished_run
    run = _copy(run, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["key_format"]  # as kd-edge wrote it before: keys of the version and every field
    for record in manifest["stages"].values():
        record["key"] = "0" * 64
        record.pop("code", None)
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="made by an older kd-edge .* pass --resume to redo them there"):
        run_pipeline(_recipe(recipe_path), run, progress=False)
    result = run_pipeline(_recipe(recipe_path), run, resume=True, stop_after="data", progress=False)
    assert result.ran == ["data"]
    assert json.loads((run / "manifest.json").read_text())["key_format"] == 2
