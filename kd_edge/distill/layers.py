"""Cutting a transformer's stack of layers: where it lives in a model, and a copy keeping some of it
(used by the student stage's ``teacher_layers`` and by ``distill/pruning.py``)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from kd_edge.errors import ArtifactError

if TYPE_CHECKING:
    from torch import nn


def find_layer_list(model: nn.Module, n_layers: int) -> tuple[nn.Module, str]:
    """The (parent module, attribute) holding the model's stack of transformer layers: the first
    ModuleList of exactly ``n_layers`` entries (encoder.layer in BERT, model.layers in Llama...)."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr
    raise ArtifactError(f"{type(model).__name__} has no list of {n_layers} layers to select from; "
                        "this architecture cannot build a teacher_layers student")


def keep_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A deep copy of ``teacher`` keeping only ``layers`` (0-based), config updated to match."""
    from torch import nn

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
