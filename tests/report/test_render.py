import pytest

from kd_edge.report.render import headline, to_html, to_markdown

REPORT = {
    "title": "demo", "task": "sentence_embedding", "teacher": "t", "kd_edge_version": "0", "created": "now",
    "evaluation": {"n_test": 100, "n_test_labelled": 90, "knn_k": 10},
    "bench_settings": {"target": "local", "batch": 1, "seq": 128, "threads": 2, "timed_runs": 100},
    "environment": {"cpu_model": "Test CPU", "cpu_count": 2, "machine": "x86_64"},
    "training": {"curve": [{"step": 1, "loss": 1.0, "loss_a": 0.6}, {"step": 2, "loss": 0.5, "loss_a": 0.3}]},
    "rows": [
        {"name": "teacher", "kind": "teacher", "runtime": "torch", "params": 22.7e6, "file_size_mb": 90.0,
         "latency_p50_ms": 20.0, "latency_p90_ms": 21.0, "probe_accuracy": 0.80, "speedup_p50": 1.0},
        {"name": "student", "kind": "student", "runtime": "torch", "params": 15.6e6, "file_size_mb": 62.0,
         "latency_p50_ms": 6.0, "latency_p90_ms": 7.0, "probe_accuracy": 0.78, "speedup_p50": 20 / 6},
        {"name": "student.int8.onnx", "kind": "artifact", "runtime": "onnxruntime", "params": 15.6e6,
         "file_size_mb": 15.6, "latency_p50_ms": 2.5, "latency_p90_ms": 2.7, "probe_accuracy": 0.775,
         "speedup_p50": 8.0, "parity_passed": False, "parity_reason": "probe accuracy drop +1.5 pt > 1.0 pt"},
    ],
}


def test_headline_states_the_three_things_a_user_judges():
    text = " ".join(headline(REPORT))
    assert "97.5 % of the teacher's probe accuracy" in text
    assert "Fastest: student.int8.onnx at 2.50 ms p50, 8.0× the teacher's" in text
    assert "Parity: FAILED for student.int8.onnx." in text


def test_markdown_has_one_row_per_model_and_the_failed_verdict():
    md = to_markdown(REPORT)
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | params | MACs | size MB | p50 ms")
    assert any(line.startswith("| teacher (PyTorch) | 22.7 M | — | 90.0 | 20.00") for line in table)
    assert "| student.int8.onnx | onnxruntime | **FAIL** | probe accuracy drop +1.5 pt > 1.0 pt |" in md


def test_html_is_self_contained():
    html = to_html(REPORT)
    # Pareto, latency p50, size, loss (no per-run samples, memory or classes in this report)
    assert html.startswith("<!doctype html>") and html.count("<svg") == 4
    assert "<script" not in html and "src=" not in html and "href=" not in html
    assert "Test CPU" in html and "class='fail'" in html


def test_the_schema_accepts_a_full_report_and_rejects_a_broken_one():
    import copy

    import jsonschema

    from kd_edge.report.schema import validate

    report = copy.deepcopy(REPORT)
    report.update({"schema": "kd-edge.report/1", "name": "demo", "quality_metric": "probe_accuracy",
                   "higher_is_better": True})
    for row in report["rows"]:
        row.update({"format": "pytorch" if row["kind"] != "artifact" else "onnx",
                    "precision": "fp32" if row["kind"] != "artifact" else "int8"})
    validate(report)
    broken = copy.deepcopy(report)
    broken["rows"][0]["kind"] = "mentor"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    del broken["rows"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_compare_marks_better_and_worse():
    from kd_edge.report.compare import compare, to_markdown

    old = {"name": "main", "rows": [{"name": "student.int8.onnx", "latency_p50_ms": 2.0, "probe_accuracy": 0.78},
                                    {"name": "student.fp16.onnx", "latency_p50_ms": 3.0}]}
    new = {"name": "branch", "quality_metric": "probe_accuracy",
           "rows": [{"name": "student.int8.onnx", "latency_p50_ms": 2.5, "probe_accuracy": 0.79},
                    {"name": "student.int4.onnx", "latency_p50_ms": 1.0}]}
    diff = compare(old, new)
    figures = diff["rows"][0]["figures"]
    assert figures["latency_p50_ms"]["verdict"] == "worse" and figures["probe_accuracy"]["verdict"] == "better"
    md = to_markdown(diff)
    assert "| student.int8.onnx | latency_p50_ms | 2 | 2.5 | +25.0 % | **worse** |" in md
    assert "student.int4.onnx | (new row)" in md and "student.fp16.onnx | (removed)" in md
