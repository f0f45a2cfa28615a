"""Check a recipe against the files it names and fill in what it leaves to defaults, before any stage
runs: a wrong teacher path or an impossible student fails here, in a second, with nothing written.

Everything here reads small JSON files only; no torch.
"""

from __future__ import annotations

from pathlib import Path

from kd_edge.config import Recipe
from kd_edge.data.loaders import source_path
from kd_edge.distill import LOSSES
from kd_edge.distill.config import LossConfig
from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.tasks import TASKS
from kd_edge.tasks.hub import hidden_size, num_layers, read_config, resolve_model_dir, sentence_transformers_pooling

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")


def pick_layers(layers: int | list[int], n_teacher: int) -> list[int]:
    """Teacher layer indices (0-based) a `teacher_layers` student keeps."""
    if isinstance(layers, int):
        if layers < 1:
            raise ConfigError(f"student.layers={layers}: a student needs at least 1 layer")
        if layers > n_teacher:
            raise ConfigError(f"student.layers={layers} is more layers than the teacher has ({n_teacher}); "
                              f"choose at most {n_teacher}")
        return [round((i + 1) * n_teacher / layers) - 1 for i in range(layers)]
    if not layers:
        raise ConfigError("student.layers is an empty list; list teacher layer indices, e.g. [2, 5]")
    if len(layers) > n_teacher:
        raise ConfigError(f"student.layers lists {len(layers)} layers, more than the teacher has ({n_teacher})")
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise ConfigError(f"student.layers {bad} are out of range: the teacher's layers are 0..{n_teacher - 1}")
    return list(layers)


def resolve_layer_map(loss: LossConfig, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Explicit (student, teacher) hidden-state pairs for a hidden-state loss (1-based; 0 = embeddings)."""
    lm = loss.layer_map or "uniform"
    if lm == "uniform":
        return [(j, round(j * n_teacher / n_student)) for j in range(1, n_student + 1)]
    if lm == "last":
        return [(n_student, n_teacher)]
    for s, t in lm:
        if not (0 <= s <= n_student and 0 <= t <= n_teacher):
            raise ConfigError(f"loss {loss.name}: layer pair ({s}, {t}) is out of range; student layers are "
                              f"0..{n_student}, teacher layers 0..{n_teacher} (0 = embedding output)")
    return [tuple(p) for p in lm]


def teacher_dir(recipe: Recipe) -> Path:
    """The local folder of the teacher."""
    return resolve_model_dir(recipe.teacher.model, revision=recipe.teacher.revision, what="teacher.model")


def resolve(recipe: Recipe) -> Recipe:
    """Validate the recipe against the teacher and data it names; return it with defaults made explicit."""
    TASKS.check(recipe.task)
    if not TASKS.is_available(recipe.task):
        TASKS.get(recipe.task)  # raises DependencyError with the install hint
    tdir = teacher_dir(recipe)
    if not any((tdir / f).is_file() for f in _TOKENIZER_FILES):
        raise ArtifactError(f"teacher '{recipe.teacher.model}' has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
                            "save the tokenizer into the model folder")
    tcfg = read_config(tdir)
    n_teacher = num_layers(tcfg)
    if n_teacher is None:
        raise ArtifactError(f"teacher config {tdir / 'config.json'} names no layer count (num_hidden_layers); "
                            "is this a transformer checkpoint?")
    if hidden_size(tcfg) is None:
        raise ArtifactError(f"teacher config {tdir / 'config.json'} names no hidden size")
    layers = pick_layers(recipe.student.layers, n_teacher)
    losses = []
    for loss in recipe.distill.losses:
        LOSSES.check(loss.name)
        if LOSSES.meta(loss.name).get("hidden"):
            loss = loss.model_copy(update={"layer_map": resolve_layer_map(loss, len(layers), n_teacher)})
        elif loss.layer_map is not None:
            raise ConfigError(f"loss {loss.name} does not use hidden states; remove its layer_map")
        losses.append(loss)
    st_pool, st_norm = sentence_transformers_pooling(tdir)
    teacher = recipe.teacher.model_copy(update={
        "pooling": recipe.teacher.pooling if recipe.teacher.pooling != "auto" else (st_pool or "mean"),
        "normalize": recipe.teacher.normalize if recipe.teacher.normalize is not None else (st_norm is not False),
    })
    src = source_path(recipe.data.source)
    if not src.exists():
        raise ArtifactError(f"data.source '{recipe.data.source}' does not exist; point it at a .jsonl/.csv/.txt file "
                            "or use bundled:vader")
    if src.is_file() and src.stat().st_size == 0:
        raise ArtifactError(f"data.source '{recipe.data.source}' is empty; give it some text")
    return recipe.model_copy(update={
        "teacher": teacher,
        "student": recipe.student.model_copy(update={"layers": layers}),
        "distill": recipe.distill.model_copy(update={"losses": losses}),
    })


def hidden_layers_needed(recipe: Recipe) -> tuple[list[int], list[int]]:
    """(student layers, teacher layers) whose hidden states the resolved recipe's losses read."""
    s, t = set(), set()
    for loss in recipe.distill.losses:
        for a, b in loss.layer_map or []:
            s.add(a)
            t.add(b)
    return sorted(s), sorted(t)
