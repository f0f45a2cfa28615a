"""Sentence-embedding task: an encoder whose token states are pooled into one vector per text.

Distilled outputs: the pooled embedding and chosen hidden states. Metrics (kd_edge.tasks.embedding_metrics):
cosine to the teacher, top-k neighbour agreement, and a logistic-regression probe on labelled text.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kd_edge.tasks.base import Batch, CacheSpec, Task
from kd_edge.tasks.kinds import KINDS


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    """Pool token states [B, T, H] over real tokens (mask [B, T]) into [B, H]."""
    if mode == "cls":
        out = hidden[:, 0]
    elif mode == "max":
        out = hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(out, dim=-1) if normalize else out


class EmbeddingModule(nn.Module):
    """(input_ids, attention_mask) -> sentence_embedding: the exact function that gets exported."""

    def __init__(self, backbone: nn.Module, pooling: str, normalize: bool):
        super().__init__()
        self.backbone, self.pooling, self.normalize = backbone, pooling, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling, self.normalize)


class SentenceEmbeddingTask(Task):
    """Adapter for `task: sentence_embedding`."""

    kind = KINDS["sentence_embedding"]

    def forward(self, model: nn.Module, batch: Batch, *, meta: dict, hidden_layers: tuple[int, ...] = (),
                attentions: bool = False) -> dict[str, Any]:
        """The pooled embedding, plus the requested hidden states (0 = embeddings, i = layer i)."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=bool(hidden_layers), output_attentions=attentions)
        return {"pooled": pool(out.last_hidden_state, batch["attention_mask"], meta["pooling"], meta["normalize"]),
                **self.hidden_outputs(out, hidden_layers, attentions)}

    def cache_outputs(self, out: dict[str, Any], batch: Batch, spec: CacheSpec) -> dict[str, tuple[str, torch.Tensor]]:
        fields = {"pooled": ("example", out["pooled"].float())}
        for layer, h in out.get("hidden", {}).items():
            fields[f"hidden_{layer}"] = ("token", h.half())
        return fields

    def dev_score(self, out, batch, teacher) -> tuple[float, float]:
        """Cosine to the teacher's embedding."""
        return float(nn.functional.cosine_similarity(out["pooled"], teacher(), dim=-1).sum()), float(len(batch.idx))

    def export_module(self, model: nn.Module, meta: dict) -> nn.Module:
        return EmbeddingModule(model, meta["pooling"], meta["normalize"]).eval()
