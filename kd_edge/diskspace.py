"""Free space, estimated before the stages that write large files.

A stage that runs out of space mid-way fails cleanly (its temporary output is removed and the error
names the path), but only after minutes of work. These estimates let the pipeline refuse at once when
the disk clearly cannot hold what a stage writes. They are deliberately low (a refusal must be
right): the real need can be larger, and then the stage's own error still says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from kd_edge.errors import FileSystemError

if TYPE_CHECKING:
    from kd_edge.config import Recipe

MB = 1e6
# bytes an exported file takes per byte of fp32 weights, by precision
_PRECISION_SHARE = {"fp32": 1.0, "fp16": 0.5, "int8": 0.25, "int8-static": 0.25, "int8-weights": 0.25, "int4": 0.15}


def _weights_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin", ".gguf"))


def _text_bytes(run_dir: Path) -> int:
    from kd_edge.runfiles import RunFiles

    data = RunFiles(run_dir).data
    return sum(f.stat().st_size for f in (data.train, data.test) if f.is_file())


def _teacher(recipe: "Recipe", run_dir: Path) -> int:
    """Cached hidden states (fp16) of every token: about one token per 5 bytes of JSONL text."""
    from kd_edge.teachers import hidden_layers_needed, teacher_configs
    from kd_edge.tasks.kinds import task_kind

    kind = task_kind(recipe.task)
    tokens = _text_bytes(run_dir) / 5
    total = 0.0
    for i, cfg in enumerate(teacher_configs(recipe)):
        layers = len(hidden_layers_needed(recipe, i)[1])
        width = _width(recipe, i)
        total += tokens * layers * width * 2
        total += tokens * kind.cached_bytes_per_token(cfg.top_k)
    return int(total)


def _width(recipe: "Recipe", index: int) -> int:
    from kd_edge.teachers import resolve_teacher, teacher_configs
    from kd_edge.tasks.hub import hidden_size, read_config

    cfg = teacher_configs(recipe)[index]
    if cfg.gguf_file:
        return 0
    try:
        return hidden_size(read_config(resolve_teacher(cfg))) or 0
    except Exception:  # an estimate never fails a run
        return 0


def _distill(recipe: "Recipe", run_dir: Path) -> int:
    """The student, and a checkpoint with its weights and two optimizer moments."""
    from kd_edge.runfiles import RunFiles

    return 4 * _weights_bytes(RunFiles(run_dir).student_init)


def _export(recipe: "Recipe", run_dir: Path) -> int:
    from kd_edge.runfiles import RunFiles

    weights = _weights_bytes(RunFiles(run_dir).student)
    return int(weights * sum(_PRECISION_SHARE.get(a.precision, 1.0) for a in recipe.export.artifacts))


# The student stage writes a fraction of the teacher once; distill's estimate covers it.
ESTIMATES: dict[str, Callable[["Recipe", Path], int]] = {"teacher": _teacher, "distill": _distill, "export": _export}




def check_free_space(stage: str, recipe: "Recipe", run_dir: Path) -> None:
    """Refuse to start ``stage`` when the disk holding ``run_dir`` has less free space than the
    stage's (low) estimate of what it writes."""
    estimate = ESTIMATES.get(stage)
    if estimate is None:
        return
    need = estimate(recipe, run_dir)
    if need <= 0:
        return
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise FileSystemError(f"stage '{stage}' writes about {need / MB:,.0f} MB into {run_dir}, and its disk has "
                              f"{free / MB:,.0f} MB free; free space there or pass --out on another disk")
