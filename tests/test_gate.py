import pytest

from kd_edge.errors import GateError
from kd_edge.gate import Budget, evaluate_budgets, lower_is_better, verdict_junit, verdict_markdown

REPORT = {"rows": [
    {"name": "teacher", "latency_p50_ms": 20.0, "probe_accuracy": 0.8},
    {"name": "student.int8.onnx", "latency_p50_ms": 2.5, "speedup_p50": 8.0, "file_size_mb": 15.6, "probe_accuracy": 0.78,
     "max_abs_diff": None},
]}


@pytest.mark.parametrize("budget, passed", [
    ({"artifact": "student.int8.onnx", "metric": "speedup_p50", "min": 5}, True),
    ({"artifact": "student.int8.onnx", "metric": "speedup_p50", "min": 10}, False),
    ({"artifact": "student.int8.onnx", "metric": "file_size_mb", "max": 20}, True),
    ({"artifact": "student.int8.onnx", "metric": "file_size_mb", "max": 10}, False),
    ({"artifact": "teacher", "metric": "probe_accuracy", "min": 0.7, "max": 0.9}, True),
    ({"artifact": "teacher", "metric": "probe_accuracy", "min": 0.85, "max": 0.9}, False),
])
def test_budget_verdicts(budget, passed):
    verdict = evaluate_budgets(REPORT, [Budget(**budget)])
    assert verdict["passed"] is passed and verdict["checks"][0]["passed"] is passed


def test_one_broken_budget_fails_the_gate():
    v = evaluate_budgets(REPORT, [Budget(artifact="teacher", metric="latency_p50_ms", max=30),
                                  Budget(artifact="student.int8.onnx", metric="latency_p50_ms", max=1)])
    assert not v["passed"] and v["n_passed"] == 1 and v["n_budgets"] == 2


def test_unknown_row_and_metric_are_gate_errors():
    with pytest.raises(GateError, match="'student.fp16.onnx', which is not a row"):
        evaluate_budgets(REPORT, [Budget(artifact="student.fp16.onnx", metric="speedup_p50", min=1)])
    with pytest.raises(GateError, match="no metric 'speedup'; did you mean 'speedup_p50'"):
        evaluate_budgets(REPORT, [Budget(artifact="student.int8.onnx", metric="speedup", min=1)])
    with pytest.raises(GateError, match="no number for it"):
        evaluate_budgets(REPORT, [Budget(artifact="student.int8.onnx", metric="max_abs_diff", max=1)])


def test_budget_needs_a_bound():
    with pytest.raises(ValueError, match="needs `min`, `max` or `max_regression`"):
        Budget(artifact="teacher", metric="x")


BASELINE = {"rows": [
    {"name": "teacher", "latency_p50_ms": 20.0, "probe_accuracy": 0.8},
    {"name": "student.int8.onnx", "latency_p50_ms": 2.4, "speedup_p50": 8.3, "file_size_mb": 15.6, "probe_accuracy": 0.79},
]}


@pytest.mark.parametrize("metric, limit, passed", [
    ("latency_p50_ms", 0.05, True),    # 2.4 -> 2.5 ms is 4.2 % slower
    ("latency_p50_ms", 0.03, False),
    ("probe_accuracy", 0.02, True),    # 0.79 -> 0.78 is 1.3 % lower
    ("probe_accuracy", 0.01, False),
    ("file_size_mb", 0.0, True),       # unchanged
])
def test_regression_against_a_baseline(metric, limit, passed):
    v = evaluate_budgets(REPORT, [Budget(artifact="student.int8.onnx", metric=metric, max_regression=limit)], BASELINE)
    assert v["passed"] is passed and v["checks"][0]["baseline"] == [r for r in BASELINE["rows"] if r["name"] == "student.int8.onnx"][0][metric]


def test_regression_needs_a_baseline():
    with pytest.raises(GateError, match="no baseline report was given; pass --baseline"):
        evaluate_budgets(REPORT, [Budget(artifact="teacher", metric="latency_p50_ms", max_regression=0.1)])


def test_budget_on_a_target():
    report = {"rows": [{"name": "student.int8.onnx", "target": "local", "latency_p90_ms": 3.0},
                       {"name": "student.int8.onnx", "target": "rpi5", "latency_p90_ms": 30.0}]}
    ok = Budget(artifact="student.int8.onnx", target="local", metric="latency_p90_ms", max=10)
    broken = Budget(artifact="student.int8.onnx", target="rpi5", metric="latency_p90_ms", max=10)
    assert evaluate_budgets(report, [ok])["passed"] and not evaluate_budgets(report, [broken])["passed"]
    with pytest.raises(GateError, match="on target 'adb'"):
        evaluate_budgets(report, [Budget(artifact="student.int8.onnx", target="adb", metric="latency_p90_ms", max=1)])


def test_direction_of_metrics():
    assert lower_is_better("latency_p90_ms") and lower_is_better("file_size_mb") and lower_is_better("perplexity")
    assert lower_is_better("kl_from_teacher") and lower_is_better("accuracy_drop")
    assert not lower_is_better("accuracy") and not lower_is_better("speedup_p50") and not lower_is_better("throughput_per_s")


def test_junit_and_markdown():
    import xml.etree.ElementTree as ET

    v = evaluate_budgets(REPORT, [Budget(artifact="teacher", metric="latency_p50_ms", max=30),
                                  Budget(artifact="student.int8.onnx", metric="file_size_mb", max=10)])
    suite = ET.fromstring(verdict_junit(v))
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert len(suite.findall("testcase/failure")) == 1 and "breaks <= 10" in suite.find("testcase/failure").get("message")
    md = verdict_markdown(v)
    assert "FAILED (1/2 budgets)" in md and "| student.int8.onnx | file_size_mb | <= 10 | 15.6 | **FAIL** |" in md


def test_speed_figures_from_a_busy_machine_are_marked_and_can_be_refused():
    import copy

    from kd_edge.gate import verdict_table

    report = copy.deepcopy(REPORT)
    report["rows"][0]["latency_flags"] = ["other processes used 1.1 cores while it was timed"]  # the baseline
    budgets = [Budget(artifact="student.int8.onnx", metric="speedup_p50", min=5),
               Budget(artifact="student.int8.onnx", metric="file_size_mb", max=20)]
    counted = evaluate_budgets(report, budgets)
    assert counted["passed"] and counted["n_unreliable"] == 1
    assert counted["checks"][0]["unreliable"] == ["teacher: other processes used 1.1 cores while it was timed"]
    assert "unreliable" not in counted["checks"][1]  # a size is not a timing
    assert "(unreliable: busy machine)" in verdict_table(counted) and "counted" in verdict_table(counted)
    refused = evaluate_budgets(report, budgets, reliable_only=True)
    assert not refused["passed"] and refused["n_passed"] == 1
    assert "refused: measured on a busy machine" in verdict_table(refused)
    quiet = evaluate_budgets(REPORT, budgets, reliable_only=True)
    assert quiet["passed"] and quiet["n_unreliable"] == 0
