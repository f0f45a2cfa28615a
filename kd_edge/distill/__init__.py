"""Distillation: the teacher cache, student construction, losses and the training loop."""

from __future__ import annotations

from kd_edge.registry import Registry

LOSSES: Registry = Registry("loss")
_T = ("torch",)
# ``needs``: what the loss reads. pooled: sentence embeddings; logits: class or token logits; labels:
# hard labels; hidden / attentions: intermediate layers (these take a layer_map).
for _name, _needs, _summary in (
    ("embedding_cosine", "pooled", "1 - cosine(student pooled, teacher pooled) (Reimers & Gurevych 2020)."),
    ("embedding_mse", "pooled", "MSE between pooled embeddings."),
    ("kl", "logits", "Forward KL at temperature T, scaled by T^2 (Hinton et al. 2015)."),
    ("reverse_kl", "logits", "Reverse KL(student || teacher), mode-seeking (MiniLLM, Gu et al. 2024)."),
    ("jsd", "logits", "Generalised Jensen-Shannon divergence with beta (GKD, Agarwal et al. 2024)."),
    ("logit_mse", "logits", "MSE between logits (Ba & Caruana 2014)."),
    ("ce", "labels", "Hard-label cross-entropy (class labels or next tokens); its weight is the alpha."),
    ("hidden_mse", "hidden", "MSE between mapped hidden states, projected when widths differ (TinyBERT)."),
    ("hidden_cosine", "hidden", "1 - cosine between mapped hidden states per token (DistilBERT)."),
    ("attention_kl", "attentions", "KL between mapped attention distributions (MiniLM, Wang et al. 2020)."),
    ("attention_mse", "attentions", "MSE between mapped attention maps (TinyBERT)."),
):
    LOSSES.declare(_name, f"kd_edge.distill.losses:{_name}", requires=_T, summary=_summary, needs=_needs)
