"""Per-slice quality of teacher and student: the bias check.

A distilled student can lose more on some inputs than on average (it inherits and amplifies the
teacher's weak spots, or drops rare patterns). Each slice (a data column's value, or texts containing
given keywords) gets the teacher's and the student's metric and the student's gap to the teacher
there; a slice whose gap exceeds the overall gap by more than a threshold is flagged.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from kd_edge.evaluate.config import SliceConfig


def slice_masks(rows: list[dict[str, Any]], slices: list[SliceConfig]) -> list[tuple[str, np.ndarray]]:
    """(name, boolean mask over ``rows``) for every slice; a column slice expands to one per value."""
    out = []
    for s in slices:
        if s.keywords:
            pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in s.keywords) + r")\b", re.IGNORECASE)
            out.append((s.label, np.array([bool(pattern.search(r["text"])) for r in rows])))
            continue
        values = [(r.get("columns") or {}).get(s.column) for r in rows]
        wanted = [s.value] if s.value is not None else sorted({v for v in values if v is not None}, key=str)
        for v in wanted:
            out.append((f"{s.name or s.column}={v}", np.array([x == v for x in values])))
    return out


def _accuracy(correct: np.ndarray, mask: np.ndarray) -> float | None:
    return float(correct[mask].mean()) if mask.any() else None


def _perplexity(nll: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> float | None:
    n = tokens[mask].sum()
    return math.exp(nll[mask].sum() / n) if n > 0 else None


def slice_report(masks: list[tuple[str, np.ndarray]], scores: dict[str, Any], threshold: float,
                 min_size: int) -> dict[str, Any]:
    """Teacher and student metric per slice, each slice's gap, and the flag.

    ``scores`` is either ``{"kind": "accuracy", "teacher": correct[N], "student": correct[N], "valid": mask[N]}``
    (gap = teacher - student accuracy) or ``{"kind": "perplexity", "teacher": nll[N], "student": nll[N],
    "tokens": counts[N]}`` (gap = student / teacher perplexity - 1).
    """
    kind = scores["kind"]

    def metric(who: str, mask: np.ndarray) -> float | None:
        if kind == "accuracy":
            return _accuracy(scores[who], mask & scores["valid"])
        return _perplexity(scores[who], scores["tokens"], mask)

    def gap(t: float | None, s: float | None) -> float | None:
        if t is None or s is None:
            return None
        return (t - s) if kind == "accuracy" else (s / t - 1)

    everything = np.ones(len(scores["teacher"]), dtype=bool)
    overall = gap(metric("teacher", everything), metric("student", everything))
    slices = []
    for name, mask in masks:
        size = int((mask & scores["valid"]).sum()) if kind == "accuracy" else int(mask.sum())
        t, s = metric("teacher", mask), metric("student", mask)
        g = gap(t, s)
        excess = None if g is None or overall is None else g - overall
        slices.append({"slice": name, "n": size, "teacher": t, "student": s, "gap": g, "excess_gap": excess,
                       "flagged": bool(excess is not None and size >= min_size and excess > threshold)})
    return {"metric": kind, "overall_gap": overall, "threshold": threshold, "min_size": min_size, "slices": slices}
