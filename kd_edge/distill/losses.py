"""Distillation losses. Each takes ``(student_out, teacher_out, batch, **params)`` and returns a scalar.

``*_out`` are dicts with ``pooled`` [B, H] and, for hidden-state losses, ``hidden`` {layer: [B, T, H]};
``batch`` holds ``attention_mask`` [B, T]. Hidden-state losses get ``layer_map``: (student, teacher)
layer pairs, resolved before training.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def embedding_cosine(student_out: dict, teacher_out: dict, batch: dict, **_: object) -> torch.Tensor:
    """L = mean_b (1 - cos(s_b, t_b)) on pooled sentence embeddings (Reimers & Gurevych 2020)."""
    return (1 - F.cosine_similarity(student_out["pooled"], teacher_out["pooled"], dim=-1)).mean()


def embedding_mse(student_out: dict, teacher_out: dict, batch: dict, **_: object) -> torch.Tensor:
    """L = mean_b,h (s_bh - t_bh)^2 on pooled embeddings (Reimers & Gurevych 2020, multilingual KD)."""
    return F.mse_loss(student_out["pooled"], teacher_out["pooled"])


def _pairs(student_out: dict, teacher_out: dict, layer_map):
    for s_layer, t_layer in layer_map:
        yield student_out["hidden"][s_layer], teacher_out["hidden"][t_layer].to(student_out["hidden"][s_layer].dtype)


def hidden_mse(student_out: dict, teacher_out: dict, batch: dict, *, layer_map, **_: object) -> torch.Tensor:
    """L = mean over pairs (i, j) of sum_{b,t real} ||h^S_i - h^T_j||^2 / (n_real * H) (TinyBERT, Jiao et al. 2020)."""
    mask = batch["attention_mask"].unsqueeze(-1).to(student_out["pooled"].dtype)
    terms = [(((s - t) ** 2) * mask).sum() / (mask.sum() * s.shape[-1]) for s, t in _pairs(student_out, teacher_out, layer_map)]
    return torch.stack(terms).mean()


def hidden_cosine(student_out: dict, teacher_out: dict, batch: dict, *, layer_map, **_: object) -> torch.Tensor:
    """L = mean over pairs and real tokens of 1 - cos(h^S_i, h^T_j) (DistilBERT's cosine loss, Sanh et al. 2019)."""
    mask = batch["attention_mask"].to(student_out["pooled"].dtype)
    terms = [((1 - F.cosine_similarity(s, t, dim=-1)) * mask).sum() / mask.sum()
             for s, t in _pairs(student_out, teacher_out, layer_map)]
    return torch.stack(terms).mean()
