"""The student-vs-baseline perplexity ratio and its paired bootstrap interval."""

from __future__ import annotations

import numpy as np

from kd_edge.evaluate.run import paired_ratio


def test_the_same_model_twice_is_a_ratio_of_one_within_noise():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 30, size=200).astype(float)
    nll = tokens * rng.uniform(3, 6, size=200)
    paired = paired_ratio(nll, nll.copy(), tokens)["student_vs_baseline"]
    assert paired["perplexity_ratio"] == 1 and paired["ci95"] == [1, 1] and not paired["significant"]


def test_a_student_better_on_every_text_is_significant_and_noise_is_not():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 30, size=400).astype(float)
    baseline = tokens * rng.uniform(3, 6, size=400)
    better = paired_ratio(baseline - 0.05 * tokens, baseline, tokens)["student_vs_baseline"]
    assert better["perplexity_ratio"] == np.exp(-0.05) or abs(better["perplexity_ratio"] - np.exp(-0.05)) < 1e-9
    assert better["significant"] and better["ci95"][1] < 1
    noisy = paired_ratio(baseline + tokens * rng.normal(0, 0.5, size=400), baseline, tokens)["student_vs_baseline"]
    assert noisy["ci95"][0] < noisy["perplexity_ratio"] < noisy["ci95"][1] and noisy["se"] > better["se"]
