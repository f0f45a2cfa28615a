"""Check a recipe against the files it names and fill in what it leaves to defaults, before any stage
runs: a wrong teacher path or an impossible student fails here, in a second, with nothing written.

Everything here reads small JSON files only; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_edge.config import Recipe
from kd_edge.data.loaders import source_path
from kd_edge.distill import needs_of
from kd_edge.distill.config import LossConfig
from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.teachers import pick_layers, resolve_teacher, teacher_configs
from kd_edge.tasks import TASKS
from kd_edge.tasks.kinds import task_kind
from kd_edge.tasks.hub import (check_weights, hidden_size, num_layers, read_config, resolve_model_dir,
                               resolve_tokenizer_dir, sentence_transformers_pooling)

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")


@dataclass(frozen=True)
class Shape:
    """The sizes of a model that layer maps and projections depend on."""

    layers: int
    hidden: int
    heads: int | None
    labels: int | None


def shape_of(config: dict[str, Any], where: str) -> Shape:
    """Layer count, width, heads and label count from a config.json dict."""
    layers, width = num_layers(config), hidden_size(config)
    if layers is None:
        raise ArtifactError(f"{where} names no layer count (num_hidden_layers); is this a transformer checkpoint?")
    if width is None:
        raise ArtifactError(f"{where} names no hidden size")
    heads = config.get("num_attention_heads") or config.get("n_head")
    labels = config.get("num_labels") or (len(config["id2label"]) if isinstance(config.get("id2label"), dict) else None)
    if labels is None and any("ForSequenceClassification" in a for a in config.get("architectures") or []):
        labels = 2  # transformers' default, which it does not write into config.json
    return Shape(layers, width, heads, labels)


def resolve_layer_map(loss: LossConfig, n_student: int, n_teacher: int, first: int = 0) -> list[tuple[int, int]]:
    """Explicit (student, teacher) pairs for an intermediate loss (1-based; 0 = embeddings, allowed when
    ``first`` is 0)."""
    lm = loss.param("layer_map") or "uniform"
    if lm == "uniform":
        return [(j, round(j * n_teacher / n_student)) for j in range(1, n_student + 1)]
    if lm == "last":
        return [(n_student, n_teacher)]
    for s, t in lm:
        if not (first <= s <= n_student and first <= t <= n_teacher):
            raise ConfigError(f"loss {loss.name}: layer pair ({s}, {t}) is out of range; student layers are "
                              f"{first}..{n_student}, teacher layers {first}..{n_teacher}"
                              + (" (0 = embedding output)" if first == 0 else ""))
    return [tuple(p) for p in lm]


def _student_shape(recipe: Recipe, teacher: Shape, teacher_config: dict[str, Any]) -> tuple[Shape, Any]:
    s = recipe.student
    if s.init == "teacher_layers":
        layers = pick_layers(s.layers, teacher.layers)
        return Shape(len(layers), teacher.hidden, teacher.heads, teacher.labels), layers
    if s.init == "prune":
        from kd_edge.distill.pruning import check_sizes

        check_sizes(s, teacher_config)
        n = pick_layers(s.layers, teacher.layers)  # checks a count or a list of teacher layers
        layers = s.layers if isinstance(s.layers, int) else n
        return Shape(len(n), s.hidden_size or teacher.hidden, s.num_attention_heads or teacher.heads,
                     teacher.labels), layers
    if s.init == "config":
        if not isinstance(s.layers, int):
            raise ConfigError("student.init: config takes student.layers as a number of layers, not a list; write "
                              "e.g. layers: 2 (a list of teacher layers is for init: teacher_layers)")
        if s.layers < 1:
            raise ConfigError(f"student.layers={s.layers}: a student needs at least 1 layer; set 1 or more")
        heads = s.num_attention_heads or teacher.heads
        width = s.hidden_size or teacher.hidden
        if heads and width % heads:
            raise ConfigError(f"student.hidden_size={width} is not divisible by num_attention_heads={heads}; "
                              "pick sizes whose ratio is a whole head size")
        return Shape(s.layers, width, heads, teacher.labels), s.layers
    path = resolve_model_dir(s.model, what="student.model")
    check_weights(path, allow_pickle=s.allow_pickle, what="student.model", key="student.allow_pickle")
    return shape_of(read_config(path), f"student config {path / 'config.json'}"), s.layers


def _check_loss(loss: LossConfig, recipe: Recipe, labelled: bool) -> None:
    needs = needs_of(loss.name)
    task_kind(recipe.task).check_loss(loss.name, needs)
    if needs == "labels" and not labelled:
        raise ConfigError(f"loss {loss.name} needs labels, but data.label_field is null; name the label column or "
                          f"drop {loss.name}")
    if needs == "attentions" and recipe.distill.mode == "offline":
        raise ConfigError(f"loss {loss.name} needs the teacher's attention maps, which are not cached; "
                          "set distill.mode: live")
    n_teachers = 1 + (len(recipe.ensemble.teachers) if recipe.ensemble else 0)
    if loss.teacher is not None and not 0 <= loss.teacher < n_teachers:
        raise ConfigError(f"loss {loss.name}: teacher {loss.teacher} does not exist; teachers are numbered "
                          f"0..{n_teachers - 1} (teacher, then ensemble.teachers)")


def resolve(recipe: Recipe) -> Recipe:
    """Validate the recipe against the teachers and data it names; return it with defaults explicit."""
    kind = task_kind(recipe.task)
    if not TASKS.is_available(recipe.task):
        TASKS.get(recipe.task)  # raises DependencyError with the install hint
    shapes = []
    for i, cfg in enumerate(teacher_configs(recipe)):
        what = "teacher" if i == 0 else f"ensemble.teachers.{i - 1}"
        tdir = resolve_teacher(cfg, f"{what}.model")
        if not cfg.gguf_file and not any((tdir / f).is_file() for f in _TOKENIZER_FILES):
            raise ArtifactError(f"{what} '{cfg.model}' has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
                                "save the tokenizer into the model folder")
        if not cfg.gguf_file:
            check_weights(tdir, allow_pickle=cfg.allow_pickle, what=what, key=f"{what}.allow_pickle")
        if cfg.prepare_head is not None and (i > 0 or not kind.takes_prepare_head):
            raise ConfigError(f"{what}.prepare_head fits a classification head, which only the first teacher of a "
                              "sequence_classification recipe takes; remove it or set task: sequence_classification")
        shapes.append(shape_of(read_config(tdir) if not cfg.gguf_file else _gguf_config(tdir, cfg.gguf_file),
                               f"{what} config in {tdir}"))
    first = teacher_configs(recipe)[0]
    first_dir = resolve_teacher(first)
    student_shape, student_layers = _student_shape(
        recipe, shapes[0], read_config(first_dir) if not first.gguf_file else _gguf_config(first_dir, first.gguf_file))
    if recipe.student.tokenizer:
        resolve_tokenizer_dir(recipe.student.tokenizer)
    labelled = kind.labelled(recipe)
    losses = []
    for loss in recipe.distill.losses:
        _check_loss(loss, recipe, labelled)
        needs = needs_of(loss.name)
        if needs in ("hidden", "attentions"):
            teacher = shapes[loss.teacher or 0]
            loss = loss.model_copy(update={"layer_map": resolve_layer_map(
                loss, student_shape.layers, teacher.layers, first=0 if needs == "hidden" else 1)})
        losses.append(loss)
    if recipe.distill.mode == "mutual" and not any(l.name == "ce" for l in losses):
        raise ConfigError("distill.mode: mutual learns from the labels too; add a `ce` loss term")
    kind.check_recipe(recipe, shapes, student_shape)
    teacher = recipe.teacher
    if kind.output_field == "pooled":  # the teacher's pooling, as its sentence-transformers config says
        st_pool, st_norm = sentence_transformers_pooling(resolve_teacher(teacher))
        teacher = teacher.model_copy(update={
            "pooling": teacher.pooling if teacher.pooling != "auto" else (st_pool or "mean"),
            "normalize": teacher.normalize if teacher.normalize is not None else (st_norm is not False),
        })
    src = source_path(recipe.data.source)
    if not src.exists():
        raise ArtifactError(f"data.source '{recipe.data.source}' does not exist; point it at a .jsonl/.csv/.txt file "
                            "or use bundled:vader")
    if src.is_file() and src.stat().st_size == 0:
        raise ArtifactError(f"data.source '{recipe.data.source}' is empty; give it some text")
    _check_data(recipe, shapes[0])
    _check_target(recipe)
    _check_gate(recipe)
    return recipe.model_copy(update={
        "teacher": teacher,
        "student": recipe.student.model_copy(update={"layers": student_layers}),
        "distill": recipe.distill.model_copy(update={"losses": losses}),
    })


def _check_data(recipe: Recipe, teacher: Shape) -> None:
    """Read the data as the data stage will (no torch: a second at most for tens of thousands of rows)
    and check what the later stages need of it: texts, and labels with at least two classes."""
    from kd_edge.data.run import read_examples

    if not task_kind(recipe.task).takes_label_column:
        read_examples(recipe)
        return
    examples, names = read_examples(recipe)
    found = sorted({e["label"] for e in examples if e.get("label") is not None})
    field = recipe.data.label_field
    needs_labels = [loss.name for loss in recipe.distill.losses if needs_of(loss.name) == "labels"]
    if recipe.teacher.prepare_head is not None:
        needs_labels.append("teacher.prepare_head")
    if field and not found and needs_labels:
        raise ConfigError(f"{needs_labels[0]} needs labels, but no row of '{recipe.data.source}' has a value in the "
                          f"label column '{field}'; name the right column in data.label_field")
    if len(found) == 1:
        shown = names[found[0]] if names else found[0]
        raise ConfigError(f"the label column '{field}' holds one class ({shown!r}) in every labelled row; labels need "
                          "at least two classes (a probe or classifier learns nothing from one), so use data with "
                          "several classes or set data.label_field: null")
    if task_kind(recipe.task).label_kind == "class" and recipe.teacher.prepare_head is None and teacher.labels \
            and found and found[-1] >= teacher.labels:
        high = names[found[-1]] if names else found[-1]
        raise ConfigError(f"the data has {len(names) if names else found[-1] + 1} classes (up to {high!r}) but the "
                          f"teacher predicts {teacher.labels}; use the teacher's label set, or fit a new head with "
                          "teacher.prepare_head")


def report_rows(recipe: Recipe) -> list[str]:
    """The rows the report will have: the teachers, the student and every exported file."""
    rows = ["teacher"] + [f"teacher_{i}" for i in range(1, len(teacher_configs(recipe)))] + ["student"]
    return rows + [a.name for a in recipe.export.artifacts]


def _check_gate(recipe: Recipe) -> None:
    """Every budget names a row the report will have; a baseline report exists."""
    from kd_edge.registry import closest

    rows = report_rows(recipe)
    for i, budget in enumerate(recipe.gate.budgets):
        if budget.artifact not in rows:
            raise ConfigError(f"gate.budgets.{i} names '{budget.artifact}'{closest(budget.artifact, rows)}, which will "
                              f"not be a row of the report (rows: {', '.join(rows)}); fix the budget or add the file "
                              "to export.artifacts")
    if recipe.gate.baseline:
        from kd_edge.runfiles import report_file

        if not report_file(Path(recipe.gate.baseline).expanduser()).is_file():
            raise ArtifactError(f"gate.baseline '{recipe.gate.baseline}' has no report.json; point it at a baseline "
                                "run folder or its report.json")


def _check_target(recipe: Recipe) -> None:
    """The benchmark target exists and its settings hold (an SSH address parses); nothing is contacted."""
    from kd_edge.bench.profiles import profile_for

    profile_for(recipe.bench)


def _gguf_config(folder: Path, gguf_file: str) -> dict[str, Any]:
    """The config of a GGUF checkpoint, read from its header (no weights loaded)."""
    path = folder / gguf_file
    if not path.is_file():
        raise ArtifactError(f"teacher.gguf_file '{gguf_file}' is not in {folder}; name a .gguf file inside it")
    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError as e:
        from kd_edge.errors import DependencyError

        raise DependencyError("reading a .gguf teacher needs transformers and gguf; run: pip install gguf") from e
    return load_gguf_checkpoint(str(path), return_tensors=False)["config"]
