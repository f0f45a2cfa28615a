"""The ``student`` stage: build the student before training.

``teacher_layers`` (DistilBERT, Sanh et al. 2019): a copy of the teacher that keeps its embeddings,
head and a chosen subset of its transformer layers, with the same tokenizer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.runfiles import STUDENT_META
from kd_edge.errors import ArtifactError
from kd_edge.preflight import teacher_dir
from kd_edge.tasks import TASKS

if TYPE_CHECKING:
    from kd_edge.config import Recipe



def find_layer_list(model: nn.Module, n_layers: int) -> tuple[nn.Module, str]:
    """The (parent module, attribute) holding the model's stack of transformer layers: the first
    ModuleList of exactly ``n_layers`` entries (encoder.layer in BERT, model.layers in Llama...)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr
    raise ArtifactError(f"{type(model).__name__} has no list of {n_layers} layers to select from; "
                        "this architecture cannot build a teacher_layers student")


def keep_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A deep copy of ``teacher`` keeping only ``layers`` (0-based), config updated to match."""
    student = copy.deepcopy(teacher)
    n = student.config.num_hidden_layers
    parent, attr = find_layer_list(student, n)
    stack = getattr(parent, attr)
    kept = nn.ModuleList([stack[i] for i in layers])
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():  # decoder layers index their KV-cache slot by layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    setattr(parent, attr, kept)
    student.config.num_hidden_layers = len(layers)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in layers]
    return student


def save_student(model: nn.Module, tokenizer, meta: dict, out: Path) -> None:
    """save_pretrained the model and tokenizer, plus kd-edge's own notes (pooling, origin)."""
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_json(out / STUDENT_META, meta)


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write student_init/: the untrained student."""
    task = TASKS.get(recipe.task)()
    tdir = teacher_dir(recipe)
    teacher = task.load_model(tdir, trust_remote_code=recipe.teacher.trust_remote_code)
    tokenizer = task.load_tokenizer(tdir, trust_remote_code=recipe.teacher.trust_remote_code)
    student = keep_layers(teacher, list(recipe.student.layers))
    meta = {"task": recipe.task, "init": recipe.student.init, "teacher": str(tdir),
            "teacher_layers": list(recipe.student.layers), "pooling": recipe.teacher.pooling,
            "normalize": recipe.teacher.normalize,
            "params": sum(p.numel() for p in student.parameters())}
    with atomic_dir(ctx.run_dir / "student_init") as out:
        save_student(student, tokenizer, meta, out)
