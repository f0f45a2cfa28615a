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

    def save_for_libraries(self, folder, model: nn.Module, meta: dict) -> None:
        """sentence-transformers' files, so that ``SentenceTransformer(folder)`` computes the embedding
        kd-edge does: Transformer -> Pooling (the student's pooling) -> Normalize (when it normalizes)."""
        write_sentence_transformers(folder, model.config, meta["pooling"], meta["normalize"])


def write_sentence_transformers(folder, config, pooling: str, normalize: bool) -> None:
    """modules.json, sentence_bert_config.json, config_sentence_transformers.json and 1_Pooling/ (and
    2_Normalize/) in a save_pretrained folder, as sentence-transformers writes them."""
    import json
    from pathlib import Path

    folder = Path(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": min(512, config.max_position_embeddings), "do_lower_case": False},
        "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "prompts": {},
                                              "default_prompt_name": None, "similarity_fn_name": "cosine"},
        "1_Pooling/config.json": {"word_embedding_dimension": config.hidden_size,
                                  "pooling_mode_cls_token": pooling == "cls",
                                  "pooling_mode_mean_tokens": pooling == "mean",
                                  "pooling_mode_max_tokens": pooling == "max",
                                  "pooling_mode_mean_sqrt_len_tokens": False},
    }
    for name, doc in files.items():
        (folder / name).write_text(json.dumps(doc, indent=2) + "\n")
