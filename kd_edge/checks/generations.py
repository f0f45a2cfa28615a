"""How a causal LM's own generations read: greedy continuations of fixed held-out prompts (teacher,
student, baseline), and how much they repeat themselves.

A small LM that learned the next-token statistics but not the text loops ("and I am, and I am, and I
am"); perplexity does not show it. Two measures over the generated tokens, the prompt excluded:

- ``repeated_4grams``: the share of the continuation's 4-grams that already occurred earlier in it
  (0 for varied text, near 1 for a loop);
- ``distinct_2``: distinct bigrams over all bigrams (near 1 for varied text).

A continuation *loops* when ``repeated_4grams`` reaches ``evaluate.loop_threshold``.
"""

from __future__ import annotations

import numpy as np

LOOP_N = 4


def repeated_share(tokens: list[int], n: int = LOOP_N) -> float:
    """The share of ``tokens``' n-grams that occurred earlier in ``tokens``."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def distinct(tokens: list[int], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of ``tokens`` (1.0 when there are none)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def degeneration(continuations: list[list[int]], threshold: float) -> dict:
    """The two measures, averaged over the continuations, and how many of them loop."""
    shares = [repeated_share(c) for c in continuations]
    return {"repeated_4grams": float(np.mean(shares)) if shares else None,
            "distinct_2": float(np.mean([distinct(c) for c in continuations])) if continuations else None,
            "looping_prompts": sum(s >= threshold for s in shares), "sample_prompts": len(continuations)}


def held_out_prompts(texts: list[np.ndarray], n: int, tokens: int) -> list[list[int]]:
    """The first ``n`` held-out texts longer than ``tokens``, cut to their first ``tokens`` tokens: the
    same prompts for every model, every run of the same data."""
    return [t[:tokens].tolist() for t in texts if len(t) > tokens][:n]


def torch_greedy(model, prompt: list[int], n: int) -> list[int]:
    """PyTorch's own greedy generation (KV cache on), exactly ``n`` new tokens."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                             pad_token_id=model.config.pad_token_id or 0)
    return out[0, len(prompt):].tolist()


def samples(models: dict[str, object], prompts: list[list[int]], new_tokens: int, eos_id: int | None,
            decode, threshold: float) -> tuple[dict[str, dict], list[dict]]:
    """Greedy continuations of ``prompts`` by each of ``models`` (name -> transformers causal LM), stopped
    at ``eos_id``; returns (per model: ``degeneration``, the samples as text: prompt and each model's
    continuation)."""
    out = {name: [_until(torch_greedy(m, p, new_tokens), eos_id) for p in prompts] for name, m in models.items()}
    measures = {name: degeneration(c, threshold) for name, c in out.items()}
    rows = [{"prompt": decode(p), **{name: decode(out[name][i]) for name in models},
             **{f"{name}_loops": repeated_share(out[name][i]) >= threshold for name in models}}
            for i, p in enumerate(prompts)]
    return measures, rows


def _until(tokens: list[int], eos_id: int | None) -> list[int]:
    return tokens[:tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens
