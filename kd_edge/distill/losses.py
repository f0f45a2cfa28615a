"""Distillation losses. Each takes ``(student_out, teacher_out, batch, **params)`` and returns a scalar.

``*_out`` are dicts with ``pooled`` [B, H] (embeddings) or ``logits`` ([B, C] for classification,
[B, T, V] for language models), and for intermediate losses ``hidden`` {layer: [B, T, H]} and
``attentions`` {layer: [B, heads, T, T]}. A causal-LM teacher read from the cache is *sparse*: its
``topk_logits`` / ``topk_indices`` [B, T, k] and the log-normaliser ``lse`` {temperature: [B, T]}
describe the teacher's distribution as k probabilities plus one bucket holding the remaining mass; the
student's distribution is folded onto the same k + 1 buckets, so with k = V the sparse loss equals the
dense one. ``batch`` holds ``attention_mask``, ``labels`` and, for language models, ``token_weights``
[B, T] (the weight of the prediction made at each position).

Params come from the recipe's loss entry: ``temperature``, ``beta``, ``layer_map`` (resolved (student,
teacher) pairs), ``heads``, and ``project`` (learned projections when widths differ, from the trainer).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

_EPS = 1e-12
_LOG_EPS = math.log(_EPS)


# -- helpers ---------------------------------------------------------------------------------------------
def _weighted_mean(per_item: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean over examples ([B]) or, for language models, weighted mean over positions ([B, T])."""
    if per_item.dim() == 2:
        w = batch["token_weights"].to(per_item.dtype)
        return (per_item * w).sum() / w.sum().clamp(min=_EPS)
    return per_item.mean()


def _log_probs(student_logits: torch.Tensor, teacher_out: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p teacher, log q student) at ``temperature`` over a common support on the last axis: the
    whole vocabulary for a dense teacher, the teacher's top-k plus a rest bucket for a sparse one."""
    t = temperature
    log_q = torch.log_softmax(student_logits.float() / t, -1)
    if "topk_indices" not in teacher_out:
        return torch.log_softmax(teacher_out["logits"].float() / t, -1), log_q
    idx = teacher_out["topk_indices"].long()
    lse = teacher_out["lse"].get(float(t))
    if lse is None:
        raise KeyError(f"the teacher cache holds no log-normaliser at temperature {t:g} "
                       f"(has {sorted(teacher_out['lse'])}); the teacher stage caches the recipe's temperatures")
    log_p_top = teacher_out["topk_logits"].float() / t - lse.float().unsqueeze(-1)
    log_q_top = log_q.gather(-1, idx)
    p_rest = (1 - log_p_top.exp().sum(-1, keepdim=True)).clamp(min=0)
    q_rest = (1 - log_q_top.exp().sum(-1, keepdim=True)).clamp(min=0)
    log_p = torch.cat([log_p_top, torch.log(p_rest.clamp(min=_EPS))], -1)
    log_q = torch.cat([log_q_top, torch.log(q_rest.clamp(min=_EPS))], -1)
    # a rest bucket with no mass (k = V) must contribute nothing: mark it -inf so that p = 0 there
    log_p = torch.cat([log_p[..., :-1], torch.where(p_rest > 0, log_p[..., -1:], torch.full_like(p_rest, -math.inf))], -1)
    return log_p, log_q


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over the last axis, with 0 · log 0 = 0 and log b floored (no NaN gradients)."""
    a = log_a.exp()
    safe_a = torch.where(a > 0, log_a, torch.zeros_like(log_a))
    return (a * (safe_a - log_b.clamp(min=_LOG_EPS))).sum(-1)


# -- sentence embeddings ------------------------------------------------------------------------------------
def embedding_cosine(student_out: dict, teacher_out: dict, batch: dict, **_: object) -> torch.Tensor:
    """L = mean_b (1 - cos(s_b, t_b)) on pooled sentence embeddings (Reimers & Gurevych 2020)."""
    return (1 - F.cosine_similarity(student_out["pooled"], teacher_out["pooled"], dim=-1)).mean()


def embedding_mse(student_out: dict, teacher_out: dict, batch: dict, **_: object) -> torch.Tensor:
    """L = mean_b,h (s_bh - t_bh)^2 on pooled embeddings (Reimers & Gurevych 2020, multilingual KD)."""
    return F.mse_loss(student_out["pooled"], teacher_out["pooled"])


def cosine_margin(student_out: dict, teacher_out: dict, batch: dict, *, margin: float = 0.2, **_: object) -> torch.Tensor:
    """L = mean_b (1 - cos(s_b, t_b)) + mean_{b != c} max(0, cos(s_b, t_c) - m): pull each student
    embedding to its teacher's and push it below cosine ``margin`` m from the teacher's embeddings of the
    batch's other texts (the hinge of Hadsell et al. 2006, as in torch's CosineEmbeddingLoss, with the
    teacher's in-batch embeddings as negatives). It keeps neighbours apart that embedding_cosine alone
    lets a small student collapse together; a batch of one text has no negatives (plain embedding_cosine)."""
    s = F.normalize(student_out["pooled"].float(), dim=-1)
    t = F.normalize(teacher_out["pooled"].float(), dim=-1)
    cos = s @ t.T  # [B, B]: student b against teacher c
    positive = (1 - cos.diagonal()).mean()
    n = cos.shape[0]
    if n < 2:
        return positive
    off = ~torch.eye(n, dtype=torch.bool, device=cos.device)
    return positive + (cos[off] - margin).clamp(min=0).mean()


# -- logits ---------------------------------------------------------------------------------------------------
def kl(student_out: dict, teacher_out: dict, batch: dict, *, temperature: float = 1.0, **_: object) -> torch.Tensor:
    """Forward KL, L = T^2 · KL(softmax(z_t / T) || softmax(z_s / T)) (Hinton et al. 2015); the T^2
    keeps gradient sizes comparable across temperatures."""
    log_p, log_q = _log_probs(student_out["logits"], teacher_out, temperature)
    return temperature ** 2 * _weighted_mean(_kl(log_p, log_q), batch)


def reverse_kl(student_out: dict, teacher_out: dict, batch: dict, *, temperature: float = 1.0, **_: object) -> torch.Tensor:
    """Reverse KL, L = T^2 · KL(q_s || p_t): mode-seeking, the student is not pushed to cover every
    mode of the teacher (MiniLLM, Gu et al. 2024)."""
    log_p, log_q = _log_probs(student_out["logits"], teacher_out, temperature)
    return temperature ** 2 * _weighted_mean(_kl(log_q, log_p), batch)


def jsd(student_out: dict, teacher_out: dict, batch: dict, *, temperature: float = 1.0, beta: float = 0.5,
        **_: object) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence, L = T^2 · [β KL(p || m) + (1-β) KL(q || m)] with
    m = β p + (1-β) q (GKD, Agarwal et al. 2024); β = 0.5 is the symmetric JSD."""
    log_p, log_q = _log_probs(student_out["logits"], teacher_out, temperature)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), 0)
    return temperature ** 2 * _weighted_mean(beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m), batch)


def logit_mse(student_out: dict, teacher_out: dict, batch: dict, **_: object) -> torch.Tensor:
    """L = mean (z_s - z_t)^2 over logits (Ba & Caruana 2014); for a sparse teacher, over its top-k."""
    s = student_out["logits"].float()
    if "topk_indices" in teacher_out:
        per = ((s.gather(-1, teacher_out["topk_indices"].long()) - teacher_out["topk_logits"].float()) ** 2).mean(-1)
    else:
        per = ((s - teacher_out["logits"].float()) ** 2).mean(-1)
    return _weighted_mean(per, batch)


# -- across tokenizers --------------------------------------------------------------------------------------------
# A student with its own tokenizer (``student.tokenizer``) sees, at each of its positions, the teacher's
# sparse distribution at the position that read the same text (``aligned`` 1/0: zeros elsewhere), the
# teacher's top-k ids also as the student's ids of the same tokens (``topk_student_ids``, -1 where its
# vocabulary has none) and which of its own tokens have a teacher counterpart (``student_matched`` [V]).
# Without those (one tokenizer) every position is aligned and every token matched.
def _cross_weights(teacher_out: dict, batch: dict) -> dict:
    """The batch with its token weights limited to the positions that have a teacher."""
    if "aligned" not in teacher_out:
        return batch
    return {**batch, "token_weights": batch["token_weights"] * teacher_out["aligned"].to(batch["token_weights"].dtype)}


def _teacher_top(teacher_out: dict, temperature: float) -> torch.Tensor:
    """The teacher's top-k probabilities at ``temperature`` [B, T, k]."""
    lse = teacher_out["lse"].get(float(temperature))
    if lse is None:
        raise KeyError(f"the teacher cache holds no log-normaliser at temperature {temperature:g}")
    return (teacher_out["topk_logits"].float() / temperature - lse.float().unsqueeze(-1)).exp()


def _sorted_l1(q: torch.Tensor, p_top: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of |q sorted - p sorted| for the k largest of each (q over a whole vocabulary)."""
    k = p_top.shape[-1]
    q_top = q.topk(min(k, q.shape[-1]), dim=-1).values
    if q_top.shape[-1] < k:
        q_top = F.pad(q_top, (0, k - q_top.shape[-1]))
    return (q_top - p_top.sort(-1, descending=True).values).abs().sum(-1)


def uld(student_out: dict, teacher_out: dict, batch: dict, *, temperature: float = 1.0, **_: object) -> torch.Tensor:
    """Universal logit distillation (Boizard et al. 2024): L = sum over ranks r of |q_(r) - p_(r)|, the
    student's and teacher's probabilities each sorted, so no token of one vocabulary is paired with one
    of the other. Over the teacher's top-k, plus the difference of what lies outside it (a lower bound of
    the whole sorted distance, which the unkept teacher tail does not allow)."""
    p_top = _teacher_top(teacher_out, temperature)
    q = torch.softmax(student_out["logits"].float() / temperature, -1)
    per = _sorted_l1(q, p_top)
    q_top = q.topk(min(p_top.shape[-1], q.shape[-1]), dim=-1).values
    per = per + ((1 - q_top.sum(-1)) - (1 - p_top.sum(-1))).abs()
    return _weighted_mean(per, _cross_weights(teacher_out, batch))


def gold(student_out: dict, teacher_out: dict, batch: dict, *, temperature: float = 1.0, **_: object) -> torch.Tensor:
    """The matched/unmatched hybrid of TRL's GOLD: L = T^2 · KL(p || q) over the buckets {each of the
    teacher's top-k tokens the student's vocabulary spells alike} and {everything else}, plus the sorted
    L1 (``uld``) between the teacher's unmatched top-k probabilities and the student's largest
    probabilities on its tokens without a teacher counterpart. With one vocabulary it is ``kl``."""
    t = temperature
    p_top = _teacher_top(teacher_out, t)
    sid = teacher_out.get("topk_student_ids", teacher_out["topk_indices"]).long()
    matched = sid >= 0
    log_q = torch.log_softmax(student_out["logits"].float() / t, -1)
    log_q_m = log_q.gather(-1, sid.clamp(min=0))
    p_m = torch.where(matched, p_top, torch.zeros_like(p_top))
    q_m = torch.where(matched, log_q_m.exp(), torch.zeros_like(p_top))
    p_rest = (1 - p_m.sum(-1, keepdim=True)).clamp(min=0)
    q_rest = (1 - q_m.sum(-1, keepdim=True)).clamp(min=0)
    log_p = torch.cat([torch.where(matched, torch.log(p_m.clamp(min=_EPS)), torch.full_like(p_m, -math.inf)),
                       torch.where(p_rest > 0, torch.log(p_rest.clamp(min=_EPS)), torch.full_like(p_rest, -math.inf))], -1)
    log_q_b = torch.cat([torch.where(matched, log_q_m, torch.zeros_like(log_q_m)), torch.log(q_rest.clamp(min=_EPS))], -1)
    per = t ** 2 * _kl(log_p, log_q_b)
    student_matched = teacher_out.get("student_matched")
    if student_matched is not None and not bool(matched.all()):
        own = student_matched.bool()
        own = F.pad(own, (0, log_q.shape[-1] - own.shape[-1]), value=False) if own.shape[-1] < log_q.shape[-1] else own
        q_unmatched = log_q.exp().masked_fill(own, 0.0)
        per = per + _sorted_l1(q_unmatched, torch.where(matched, torch.zeros_like(p_top), p_top))
    return _weighted_mean(per, _cross_weights(teacher_out, batch))


def ce(student_out: dict, teacher_out: dict, batch: dict, **_: object) -> torch.Tensor:
    """Hard-label cross-entropy: class labels (ignored where -1) or, for language models, the next
    token weighted by ``token_weights``. Mixed with a soft loss by the weights (α = weight of ce)."""
    logits = student_out["logits"].float()
    labels = batch["labels"]
    if logits.dim() == 3:
        per = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        return _weighted_mean(per, batch)
    keep = labels >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], labels[keep])


# -- intermediate layers ---------------------------------------------------------------------------------------
def _pairs(student_out: dict, teacher_out: dict, layer_map, project):
    for s_layer, t_layer in layer_map:
        s = student_out["hidden"][s_layer]
        t = teacher_out["hidden"][t_layer].to(s.dtype)
        if project is not None:
            s = project(s_layer, t_layer, s)
        yield s, t


def hidden_mse(student_out: dict, teacher_out: dict, batch: dict, *, layer_map, project=None, **_: object) -> torch.Tensor:
    """L = mean over pairs (i, j) of sum_{b,t real} ||W h^S_i - h^T_j||^2 / (n_real · H) (TinyBERT,
    Jiao et al. 2020); W is a learned projection when the widths differ, else the identity."""
    mask = batch["attention_mask"].unsqueeze(-1).float()
    terms = [(((s - t) ** 2) * mask).sum() / (mask.sum() * t.shape[-1])
             for s, t in _pairs(student_out, teacher_out, layer_map, project)]
    return torch.stack(terms).mean()


def hidden_cosine(student_out: dict, teacher_out: dict, batch: dict, *, layer_map, project=None, **_: object) -> torch.Tensor:
    """L = mean over pairs and real tokens of 1 - cos(W h^S_i, h^T_j) (DistilBERT, Sanh et al. 2019)."""
    mask = batch["attention_mask"].float()
    terms = [((1 - F.cosine_similarity(s, t, dim=-1)) * mask).sum() / mask.sum()
             for s, t in _pairs(student_out, teacher_out, layer_map, project)]
    return torch.stack(terms).mean()


def _attention_pairs(student_out: dict, teacher_out: dict, layer_map, heads: str):
    for s_layer, t_layer in layer_map:
        s, t = student_out["attentions"][s_layer], teacher_out["attentions"][t_layer].to(student_out["attentions"][s_layer].dtype)
        if heads == "mean" or s.shape[1] != t.shape[1]:
            if heads == "match":
                raise ValueError(f"attention heads differ (student layer {s_layer}: {s.shape[1]}, teacher layer "
                                 f"{t_layer}: {t.shape[1]}); set heads: mean to average over heads")
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        yield s, t


def attention_kl(student_out: dict, teacher_out: dict, batch: dict, *, layer_map, heads: str = "match",
                 **_: object) -> torch.Tensor:
    """L = mean over pairs, heads and real query rows of KL(A^T_j[q] || A^S_i[q]) on attention
    distributions (MiniLM, Wang et al. 2020); ``heads: mean`` compares head-averaged maps."""
    mask = batch["attention_mask"].float()
    terms = []
    for s, t in _attention_pairs(student_out, teacher_out, layer_map, heads):
        per = _kl(torch.log(t.clamp(min=_EPS)), torch.log(s.clamp(min=_EPS)))  # [B, heads, T]
        m = mask.unsqueeze(1)
        terms.append((per * m).sum() / (m.sum() * per.shape[1]))
    return torch.stack(terms).mean()


def attention_mse(student_out: dict, teacher_out: dict, batch: dict, *, layer_map, heads: str = "match",
                  **_: object) -> torch.Tensor:
    """L = mean over pairs of MSE between attention maps over real (query, key) pairs (TinyBERT)."""
    mask = batch["attention_mask"].float()
    pair_mask = (mask.unsqueeze(2) * mask.unsqueeze(1)).unsqueeze(1)  # [B, 1, T, T]
    terms = [(((s - t) ** 2) * pair_mask).sum() / (pair_mask.sum() * s.shape[1])
             for s, t in _attention_pairs(student_out, teacher_out, layer_map, heads)]
    return torch.stack(terms).mean()
