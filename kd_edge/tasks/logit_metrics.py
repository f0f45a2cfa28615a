"""Classification metrics on numpy arrays (no torch): accuracy, agreement and KL with the teacher,
expected calibration error."""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl_from_teacher(logits: np.ndarray, teacher: np.ndarray) -> float:
    """Mean KL(softmax(teacher) || softmax(logits)) at temperature 1."""
    p, q = softmax(teacher.astype(np.float64)), softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None))), -1)))


def jsd_from_teacher(logits: np.ndarray, teacher: np.ndarray) -> float:
    """Mean Jensen-Shannon divergence between teacher and student distributions (nats, <= ln 2)."""
    p, q = softmax(teacher.astype(np.float64)), softmax(logits.astype(np.float64))
    m = (p + q) / 2

    def kl(a, b):
        return np.sum(a * (np.log(np.clip(a, 1e-12, None)) - np.log(np.clip(b, 1e-12, None))), -1)

    return float(np.mean(0.5 * kl(p, m) + 0.5 * kl(q, m)))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins
    (Guo et al. 2017)."""
    probs = softmax(logits.astype(np.float64))
    conf, pred = probs.max(-1), probs.argmax(-1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(float((pred[sel] == labels[sel]).mean()) - float(conf[sel].mean()))
    return float(ece)


def classification_metrics(logits: np.ndarray, teacher: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy on labelled rows (label >= 0), agreement of predictions and KL from the teacher, ECE."""
    keep = labels >= 0
    out = {"agreement_with_teacher": float(np.mean(logits.argmax(-1) == teacher.argmax(-1))),
           "kl_from_teacher": kl_from_teacher(logits, teacher), "jsd_from_teacher": jsd_from_teacher(logits, teacher)}
    if keep.any():
        out["accuracy"] = float(np.mean(logits[keep].argmax(-1) == labels[keep]))
        out["ece"] = expected_calibration_error(logits[keep], labels[keep])
    return out
