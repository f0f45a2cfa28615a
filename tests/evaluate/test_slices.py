"""The per-slice bias check: a slice where only the student got worse is flagged; otherwise not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kd_edge.evaluate.config import SliceConfig
from kd_edge.evaluate.slices import slice_masks, slice_report

ROWS = [{"text": f"{'not ' if i % 4 == 0 else ''}good film {i}", "columns": {"source": "tweets" if i % 5 == 0 else "movie"}}
        for i in range(200)]


def _scores(student_wrong_on: np.ndarray | None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    teacher = rng.random(200) < 0.9
    student = teacher & (rng.random(200) < 0.97)  # about three points below the teacher everywhere
    if student_wrong_on is not None:
        student = student & ~(student_wrong_on & (rng.random(200) < 0.5))  # and much worse on one slice
    return {"kind": "accuracy", "teacher": teacher, "student": student, "valid": np.ones(200, dtype=bool)}


def test_masks_for_columns_and_keywords():
    masks = dict(slice_masks(ROWS, [SliceConfig(column="source"), SliceConfig(name="negation", keywords=["not", "never"])]))
    assert set(masks) == {"source=movie", "source=tweets", "negation"}
    assert masks["source=tweets"].sum() == 40 and masks["negation"].sum() == 50
    assert not dict(slice_masks([{"text": "nothing here"}], [SliceConfig(keywords=["not"])]))["not"].any()


def test_a_slice_made_worse_for_the_student_only_is_flagged():
    masks = slice_masks(ROWS, [SliceConfig(column="source"), SliceConfig(name="negation", keywords=["not"])])
    negation = dict(masks)["negation"]
    report = slice_report(masks, _scores(negation), threshold=0.1, min_size=20)
    flagged = {s["slice"] for s in report["slices"] if s["flagged"]}
    assert flagged == {"negation"}
    row = [s for s in report["slices"] if s["slice"] == "negation"][0]
    assert row["gap"] > report["overall_gap"] + 0.1 and row["n"] == 50


def test_no_slice_is_flagged_when_the_student_is_uniformly_worse():
    masks = slice_masks(ROWS, [SliceConfig(column="source"), SliceConfig(name="negation", keywords=["not"])])
    report = slice_report(masks, _scores(None), threshold=0.1, min_size=20)
    assert not any(s["flagged"] for s in report["slices"])


def test_perplexity_slices_use_relative_gaps():
    masks = [("short", np.array([True, True, False, False]))]
    scores = {"kind": "perplexity", "teacher": np.array([2.0, 2.0, 2.0, 2.0]), "student": np.array([4.0, 4.0, 2.2, 2.2]),
              "tokens": np.array([2.0, 2.0, 2.0, 2.0]), "valid": np.ones(4, dtype=bool)}
    report = slice_report(masks, scores, threshold=0.2, min_size=1)
    assert report["slices"][0]["flagged"] and report["slices"][0]["gap"] == pytest.approx(np.exp(2) / np.exp(1) - 1)


def test_slices_in_a_classification_run(tmp_path, tiny_classifier, tiny_data):
    from tests.distill.test_methods import classifier_recipe, run

    data = classifier_recipe(tiny_classifier, tiny_data)
    data["evaluate"] = {"slices": [{"column": "group"}, {"name": "sentiment words", "keywords": ["good", "bad"]}],
                        "min_slice_size": 1}
    run(data, tmp_path / "run", stop_after="evaluate")
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    names = [s["slice"] for s in metrics["slices"]["slices"]]
    assert names == ["group=a", "group=b", "sentiment words"]
    assert all(0 <= s["teacher"] <= 1 for s in metrics["slices"]["slices"])
    assert metrics["per_class"][0]["class"] == 0 and "delta" in metrics["per_class"][0]
