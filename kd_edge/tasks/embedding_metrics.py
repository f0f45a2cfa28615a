"""Embedding metrics on numpy arrays (no torch): cosine to the teacher, neighbour agreement, probe."""

from __future__ import annotations

from typing import Any

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_to_teacher(student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean cosine similarity between each student embedding and the teacher's for the same text."""
    return float(np.mean(np.sum(_unit(student) * _unit(teacher), axis=1)))


def knn_agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Mean share of each text's k nearest neighbours (cosine, itself excluded) that student and teacher
    agree on."""
    n = len(student)
    k = min(k, n - 1)
    if k < 1:
        return float("nan")

    def top(x: np.ndarray) -> np.ndarray:
        u = _unit(x.astype(np.float32))
        sim = u @ u.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k, axis=1)[:, :k]

    s, t = top(student), top(teacher)
    return float(np.mean([len(np.intersect1d(s[i], t[i], assume_unique=True)) / k for i in range(n)]))


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Fit standardisation + logistic regression; return its parameters as plain lists (JSON, no pickle)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit((x - mean) / scale, y)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": clf.coef_.tolist(),
            "intercept": clf.intercept_.tolist(), "classes": clf.classes_.tolist()}


def probe_predict(probe: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Class predictions of a probe saved by ``fit_probe``."""
    z = (x - np.asarray(probe["mean"])) / np.asarray(probe["scale"])
    logits = z @ np.asarray(probe["coef"]).T + np.asarray(probe["intercept"])
    classes = np.asarray(probe["classes"])
    if logits.shape[1] == 1:
        return classes[(logits[:, 0] > 0).astype(int)]
    return classes[np.argmax(logits, axis=1)]


def probe_accuracy(probe: dict[str, Any], x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of a saved probe."""
    return float(np.mean(probe_predict(probe, x) == y))


def embedding_metrics(emb: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None,
                      probe: dict[str, Any] | None, k: int) -> dict[str, float]:
    """The task metrics of embeddings ``emb`` of the test split (labels: -1 where missing)."""
    out = {"cosine_to_teacher": cosine_to_teacher(emb, teacher), "knn_agreement": knn_agreement(emb, teacher, k)}
    if probe is not None and labels is not None:
        keep = labels >= 0
        out["probe_accuracy"] = probe_accuracy(probe, emb[keep], labels[keep])
    return out
