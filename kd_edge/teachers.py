"""What a resolved recipe says that several stages read: its teachers (where each one's files are,
the prepared one inside the run), the teacher layers a student keeps, and the layers and temperatures
its losses read. Checks of a recipe are ``preflight.py``'s; this module only reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.distill import needs_of
from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.tasks.hub import resolve_model_dir

if TYPE_CHECKING:
    from kd_edge.config import Recipe
    from kd_edge.distill.config import TeacherConfig


def teacher_configs(recipe: "Recipe") -> list["TeacherConfig"]:
    """Every teacher: `teacher` first, then the ensemble's."""
    return [recipe.teacher] + (list(recipe.ensemble.teachers) if recipe.ensemble else [])


def resolve_teacher(cfg: "TeacherConfig", what: str = "teacher.model") -> Path:
    """The local folder of one teacher (as written in the recipe, before any preparation)."""
    path = resolve_model_dir(cfg.model, revision=cfg.revision, what=what, gguf_file=cfg.gguf_file)
    return path


def teacher_dir(recipe: "Recipe", run_dir: Path | None = None, index: int = 0) -> Path:
    """The folder the pipeline reads teacher ``index`` from: the prepared teacher inside the run when
    the recipe fits a head first, else the recipe's own folder."""
    cfg = teacher_configs(recipe)[index]
    if index == 0 and cfg.prepare_head is not None:
        if run_dir is None:
            raise ArtifactError("the prepared teacher lives in the run folder; pass it")
        from kd_edge.runfiles import RunFiles

        return RunFiles(run_dir).prepared_teacher
    return resolve_teacher(cfg, "teacher.model" if index == 0 else f"ensemble.teachers.{index - 1}.model")


def teacher_source(recipe: "Recipe", run_dir: Path | None = None, index: int = 0):
    """A ModelSource for teacher ``index`` (imports nothing heavy)."""
    from kd_edge.tasks.kinds import ModelSource

    cfg = teacher_configs(recipe)[index]
    prepared = index == 0 and cfg.prepare_head is not None
    return ModelSource(teacher_dir(recipe, run_dir, index), None if prepared else cfg.gguf_file, cfg.trust_remote_code,
                       allow_pickle=cfg.allow_pickle and not prepared)


def pick_layers(layers: int | list[int], n_teacher: int) -> list[int]:
    """Teacher layer indices (0-based) a `teacher_layers` student keeps."""
    if isinstance(layers, int):
        if layers < 1:
            raise ConfigError(f"student.layers={layers}: a student needs at least 1 layer; set 1 or more")
        if layers > n_teacher:
            raise ConfigError(f"student.layers={layers} is more layers than the teacher has ({n_teacher}); "
                              f"choose at most {n_teacher}")
        return [round((i + 1) * n_teacher / layers) - 1 for i in range(layers)]
    if not layers:
        raise ConfigError("student.layers is an empty list; list teacher layer indices, e.g. [2, 5]")
    if len(layers) > n_teacher:
        raise ConfigError(f"student.layers lists {len(layers)} layers, more than the teacher has ({n_teacher}); "
                          f"list at most {n_teacher}")
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise ConfigError(f"student.layers {bad} are out of range; the teacher's layers are 0..{n_teacher - 1}")
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    if repeated:
        raise ConfigError(f"student.layers lists teacher layer {repeated[0]} more than once; list each layer once, "
                          "e.g. [1, 3, 5]")
    if list(layers) != sorted(layers):
        raise ConfigError(f"student.layers {list(layers)} is not in increasing order; a student keeps the teacher's "
                          f"layers in their order: {sorted(layers)}")
    return list(layers)


def layers_needed(recipe: "Recipe", needs: str, teacher: int = 0) -> tuple[list[int], list[int]]:
    """(student layers, teacher ``teacher``'s layers) that the losses needing ``needs`` read."""
    s, t = set(), set()
    for loss in recipe.distill.losses:
        if needs_of(loss.name) == needs and (loss.teacher or 0) == teacher:
            for a, b in loss.param("layer_map") or []:
                s.add(a)
                t.add(b)
    return sorted(s), sorted(t)


def hidden_layers_needed(recipe: "Recipe", teacher: int = 0) -> tuple[list[int], list[int]]:
    """(student layers, teacher layers) whose hidden states the resolved recipe's losses read."""
    return layers_needed(recipe, "hidden", teacher)


def logit_temperatures(recipe: "Recipe") -> list[float]:
    """Temperatures of the logit losses (the LM cache keeps a log-normaliser for each)."""
    temps = {1.0}
    for loss in recipe.distill.losses:
        if needs_of(loss.name) == "logits":
            temps.add(float(loss.params.get("temperature", 1.0)))
    return sorted(temps)
