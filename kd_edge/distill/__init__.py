"""Distillation: the teacher cache, student construction, losses and the training loop."""

from __future__ import annotations

from kd_edge.registry import Registry

LOSSES: Registry = Registry("loss")
_T = ("torch",)
LOSSES.declare("embedding_cosine", "kd_edge.distill.losses:embedding_cosine", requires=_T,
               summary="1 - cosine(student pooled, teacher pooled), averaged over the batch.")
LOSSES.declare("embedding_mse", "kd_edge.distill.losses:embedding_mse", requires=_T,
               summary="Mean squared error between pooled embeddings.")
LOSSES.declare("hidden_mse", "kd_edge.distill.losses:hidden_mse", requires=_T, hidden=True,
               summary="MSE between mapped hidden states over real tokens (TinyBERT, Jiao et al. 2020).")
LOSSES.declare("hidden_cosine", "kd_edge.distill.losses:hidden_cosine", requires=_T, hidden=True,
               summary="1 - cosine between mapped hidden states per real token (DistilBERT, Sanh et al. 2019).")
