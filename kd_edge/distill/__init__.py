"""Distillation: the teacher cache, student construction, losses and the training loop.

``LOSSES`` lists every loss with what it reads (``needs``) and the parameters it takes (``params``,
validated per loss: ``kd_edge/distill/params.py``). Adding a loss: its function in ``distill/losses.py``,
its line here, its test.
"""

from __future__ import annotations

from typing import Iterable

from kd_edge.distill.params import BETA, HEADS, LAYER_MAP, TEMPERATURE, Param
from kd_edge.registry import Registry

LOSSES: Registry = Registry("loss")
_T = ("torch",)
# ``needs``: what the loss reads. pooled: sentence embeddings; logits: class or token logits; labels:
# hard labels; hidden / attentions: intermediate layers (these take a layer_map; attentions need the
# models' eager attention, which returns the maps).
for _name, _needs, _params, _summary in (
    ("embedding_cosine", "pooled", (), "1 - cosine(student pooled, teacher pooled) (Reimers & Gurevych 2020)."),
    ("embedding_mse", "pooled", (), "MSE between pooled embeddings."),
    ("cosine_margin", "pooled", (Param("margin", float, 0.2, "Cosine below which the teacher's embeddings of the batch's "
                                       "other texts stop pushing the student's away.", ge=-1, le=1),),
     "Cosine to the teacher plus a margin hinge against the batch's other texts (Hadsell et al. 2006)."),
    ("kl", "logits", (TEMPERATURE,), "Forward KL at temperature T, scaled by T^2 (Hinton et al. 2015)."),
    ("reverse_kl", "logits", (TEMPERATURE,), "Reverse KL(student || teacher), mode-seeking (MiniLLM, Gu et al. 2024)."),
    ("jsd", "logits", (TEMPERATURE, BETA), "Generalised Jensen-Shannon divergence with beta (GKD, Agarwal et al. 2024)."),
    ("logit_mse", "logits", (), "MSE between logits (Ba & Caruana 2014)."),
    ("ce", "labels", (), "Hard-label cross-entropy (class labels or next tokens); its weight is the alpha."),
    ("uld", "logits", (TEMPERATURE,), "Universal logit distillation: L1 between sorted teacher and student "
     "probabilities, for a student with another tokenizer (Boizard et al. 2024)."),
    ("gold", "logits", (TEMPERATURE,), "Cross-tokenizer hybrid (TRL's GOLD): KL over the tokens both vocabularies "
     "spell alike, sorted-probability L1 over the rest."),
    ("hidden_mse", "hidden", (LAYER_MAP,), "MSE between mapped hidden states, projected when widths differ (TinyBERT)."),
    ("hidden_cosine", "hidden", (LAYER_MAP,), "1 - cosine between mapped hidden states per token (DistilBERT)."),
    ("attention_kl", "attentions", (LAYER_MAP, HEADS), "KL between mapped attention distributions (MiniLM, Wang et al. 2020)."),
    ("attention_mse", "attentions", (LAYER_MAP, HEADS), "MSE between mapped attention maps (TinyBERT)."),
):
    LOSSES.declare(_name, f"kd_edge.distill.losses:{_name}", requires=_T, summary=_summary, needs=_needs,
                   params=_params)


# The losses that compare a teacher and a student reading text with different tokenizers (and ce, which
# reads the student's own next tokens): every other token-level loss pairs ids of one vocabulary.
CROSS_TOKENIZER = ("uld", "gold", "ce")


def needs_of(name: str) -> str:
    """What loss ``name`` reads (pooled, logits, labels, hidden, attentions)."""
    return LOSSES.meta(name)["needs"]


def needs_attention_maps(names: Iterable[str]) -> bool:
    """True when one of the losses reads attention maps (the models then run eager attention)."""
    return any(needs_of(n) == "attentions" for n in names)
