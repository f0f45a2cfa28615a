"""On-policy distillation of causal LMs (GKD, Agarwal et al. 2024): on a share λ of the steps
(``distill.on_policy.share``) the student continues the batch's own prompts, sampling with its KV
cache, batched, and the teacher scores those continuations; the recipe's losses are then taken over
the generated tokens only (``jsd`` with its β is GKD's generalised JSD: β → 0 forward KL, β → 1 reverse
KL; ``kl`` and ``reverse_kl`` work as they are). The teacher must run beside the student
(``distill.mode: live``): a cache holds its outputs on fixed text, not on the student's samples.

Sequence-level KD is the same loop with the teacher writing the continuations instead: that is
``distill.generate`` (teacher continuations made once, before the cache).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kd_edge.data.packed import Packed

if TYPE_CHECKING:
    from kd_edge.distill.config import OnPolicyConfig


def prompts_of(ids: Packed, idx: np.ndarray, prompt_tokens: int) -> list[np.ndarray]:
    """Each text's opening ``prompt_tokens`` tokens (at least one, leaving one to predict)."""
    return [np.asarray(ids[i][:max(1, min(prompt_tokens, len(ids[i]) - 1))]) for i in idx]


def student_continuations(student, prompts: list[np.ndarray], cfg: "OnPolicyConfig", pad_id: int,
                          eos_id: int | None) -> tuple[Packed, Packed]:
    """The prompts each continued by ``student`` (sampled at ``cfg.temperature``, up to
    ``cfg.max_new_tokens``, stopped after its end-of-text token), and per token the loss weight: 0 for
    the prompt, 1 for what the student wrote."""
    import torch

    width = max(len(p) for p in prompts)
    device = next(student.parameters()).device
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, p in enumerate(prompts):  # left-padded: every prompt ends where generation starts
        input_ids[row, width - len(p):] = torch.from_numpy(p.astype(np.int64))
        mask[row, width - len(p):] = 1
    training = student.training
    student.eval()
    try:
        with torch.no_grad():
            out = student.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                   max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                                   top_k=0, top_p=1.0, pad_token_id=pad_id, eos_token_id=eos_id, use_cache=True)
    finally:
        student.train(training)
    seqs, weights = [], []
    for p, new in zip(prompts, out[:, width:].tolist()):
        if eos_id is not None and eos_id in new:
            new = new[:new.index(eos_id) + 1]
        seqs.append(p.tolist() + new)
        weights.append([0.0] * len(p) + [1.0] * len(new))
    return Packed.from_lists(seqs), Packed.from_lists(weights, dtype=np.float32)
