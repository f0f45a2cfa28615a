"""The stage table: every stage of a run, in order, with the function that runs it, what it reads and
which recipe sections its behaviour depends on. Only this module knows the stage order.

Stage modules import nothing heavy at import time (torch is imported inside their ``run``), so this
table loads in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kd_edge import gate
from kd_edge.bench import run as bench
from kd_edge.config import Recipe
from kd_edge.data import run as data
from kd_edge.distill import cache as teacher
from kd_edge.distill import baseline, generate, prepare
from kd_edge.distill import run as distill
from kd_edge.distill import students as student
from kd_edge.errors import ConfigError
from kd_edge.evaluate import run as evaluate
from kd_edge.export import run as export
from kd_edge.report import run as report
from kd_edge.runfiles import STAGE_OUTPUTS, foreign_outputs
from kd_edge.verify import run as verify


def _teachers(recipe: Recipe) -> dict[str, Path]:
    from kd_edge.teachers import resolve_teacher, teacher_configs

    return {f"teacher{i}": resolve_teacher(cfg) for i, cfg in enumerate(teacher_configs(recipe))}


def _teachers_and_tokenizer(recipe: Recipe) -> dict[str, Path]:
    """The teachers, and the student's own tokenizer when it has one (``student.tokenizer``)."""
    from kd_edge.tasks.hub import resolve_tokenizer_dir

    own = {"student_tokenizer": resolve_tokenizer_dir(recipe.student.tokenizer)} \
        if recipe.student.tokenizer else {}
    return {**_teachers(recipe), **own}


def _primary_teacher(recipe: Recipe) -> dict[str, Path]:
    from kd_edge.teachers import resolve_teacher

    return {"teacher0": resolve_teacher(recipe.teacher)}


def _data(recipe: Recipe) -> dict[str, Path]:
    from kd_edge.data.loaders import source_path

    return {"data": source_path(recipe.data.source)}


def _bench_inputs(recipe: Recipe) -> dict[str, Path]:
    return _primary_teacher(recipe) if recipe.bench.teacher and recipe.teacher.prepare_head is None else {}


def _cached(recipe: Recipe) -> dict[str, Any]:
    from kd_edge.teachers import hidden_layers_needed, logit_temperatures, teacher_configs
    from kd_edge.tasks.kinds import task_kind

    return {"teacher_hidden_layers": [hidden_layers_needed(recipe, i)[1] for i in range(len(teacher_configs(recipe)))],
            "temperatures": logit_temperatures(recipe) if task_kind(recipe.task).is_lm else None}


def _generates(recipe: Recipe) -> bool:
    d = recipe.distill
    return bool(d.augment or d.generate or (d.rationale and d.rationale.source == "teacher"))


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline."""

    name: str
    run: Callable  # run(recipe, ctx) -> None
    needs: tuple[str, ...] = ()  # upstream stages whose outputs it reads
    sections: tuple[str, ...] = ()  # dotted recipe keys its behaviour depends on
    external: Callable[[Recipe], dict[str, Path]] | None = None  # files it reads from outside the run
    summary: str = ""
    derived: Callable[[Recipe], dict[str, Any]] | None = None  # key parts computed from the recipe
    enabled: Callable[[Recipe], bool] | None = None  # stages a recipe does not use are left out
    also_code: tuple[str, ...] = ()  # modules it runs without importing them (the device runner)

    @property
    def outputs(self) -> tuple[str, ...]:
        """What it writes, relative to the run folder (runfiles.STAGE_OUTPUTS)."""
        return STAGE_OUTPUTS[self.name]

    @property
    def foreign(self) -> tuple[str, ...]:
        """Other stages' outputs inside its folders, left out of its records (runfiles.foreign_outputs)."""
        return foreign_outputs(self.name)

    @property
    def code(self) -> tuple[str, ...]:
        """The modules whose code its key covers (and everything they import)."""
        return (self.run.__module__, *self.also_code)

    def is_enabled(self, recipe: Recipe) -> bool:
        return self.enabled is None or self.enabled(recipe)


STAGES: tuple[Stage, ...] = (
    Stage("data", data.run, (), ("task", "data", "seed", "distill.rationale", "evaluate.slices"), _data,
          "read, filter and split the text"),
    Stage("prepare", prepare.run, ("data",), ("task", "seed", "teacher.prepare_head", "data.max_length"),
          _primary_teacher, "fit the teacher's classification head", enabled=lambda r: r.teacher.prepare_head is not None),
    Stage("generate", generate.run, ("data", "prepare"),
          ("task", "seed", "distill.augment", "distill.generate", "distill.rationale", "teacher.batch_size",
           "teacher.server.url", "teacher.server.model", "teacher.terms"),
          _primary_teacher, "make training data from the teacher", enabled=_generates),
    Stage("teacher", teacher.run, ("data", "prepare", "generate"),
          ("task", "teacher", "ensemble", "data.max_length", "distill.mode", "student.tokenizer", "student.vocabulary",
           "student.vocabulary_min_count", "student.vocabulary_max_unknown"), _teachers_and_tokenizer,
          "tokenize once and cache the teachers' outputs", derived=_cached),
    Stage("student", student.run, ("prepare", "teacher"), ("task", "seed", "teacher", "ensemble", "student"), _teachers_and_tokenizer,
          "build the student and check its tokenizer"),
    Stage("distill", distill.run, ("teacher", "student", "prepare"), ("task", "seed", "distill", "ensemble"), _teachers,
          "train the student on the teachers' outputs"),
    Stage("baseline", baseline.run, ("teacher", "student"), ("task", "seed", "distill"), None,
          "the same student trained without the teacher", enabled=lambda r: r.trains_baseline()),
    Stage("evaluate", evaluate.run, ("teacher", "distill", "baseline"), ("task", "seed", "evaluate"), None,
          "teachers and student on held-out data"),
    Stage("export", export.run, ("teacher", "distill", "evaluate"), ("task", "seed", "export", "verify", "bench.threads"),
          None, "ONNX / TFLite files, quantized as asked"),
    Stage("verify", verify.run, ("teacher", "evaluate", "export"), ("task", "verify", "bench.threads"), None,
          "parity and task metrics of every file in its runtime"),
    Stage("bench", bench.run, ("prepare", "distill", "export"), ("task", "seed", "bench"), _bench_inputs,
          "latency and memory on the target, fresh process per model", also_code=("kd_edge.device_runner",)),
    Stage("report", report.run, ("data", "distill", "baseline", "evaluate", "verify", "bench"), ("task", "name", "report", "gate"),
          None, "report.json, report.md, report.html"),
    Stage("gate", gate.run, ("report",), ("gate",), None, "check the budgets"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise ConfigError(f"unknown stage '{name}'; stages are: {', '.join(STAGE_NAMES)}")
