"""Sequence-classification task: an encoder with a classification head; distilled outputs are the
class logits and chosen hidden states / attention maps. Metrics: accuracy, agreement with the teacher,
KL from the teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kd_edge.tasks.base import Batch, CacheSpec, Task
from kd_edge.tasks.kinds import KINDS


class LogitsModule(nn.Module):
    """(input_ids, attention_mask) -> logits: the exact function that gets exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class SequenceClassificationTask(Task):
    """Adapter for `task: sequence_classification`."""

    kind = KINDS["sequence_classification"]

    def forward(self, model: nn.Module, batch: Batch, *, meta: dict, hidden_layers: tuple[int, ...] = (),
                attentions: bool = False) -> dict[str, Any]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=bool(hidden_layers), output_attentions=attentions)
        return {"logits": out.logits, **self.hidden_outputs(out, hidden_layers, attentions)}

    def cache_outputs(self, out: dict[str, Any], batch: Batch, spec: CacheSpec) -> dict[str, tuple[str, torch.Tensor]]:
        fields = {"logits": ("example", out["logits"].float())}
        for layer, h in out.get("hidden", {}).items():
            fields[f"hidden_{layer}"] = ("token", h.half())
        return fields

    def dev_score(self, out, batch, teacher) -> tuple[float, float]:
        """Accuracy on the labelled rows."""
        keep = batch["labels"] >= 0
        return float((out["logits"].argmax(-1)[keep] == batch["labels"][keep]).sum()), float(keep.sum())

    def export_module(self, model: nn.Module, meta: dict) -> nn.Module:
        return LogitsModule(model).eval()
