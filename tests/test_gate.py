import pytest

from kd_edge.errors import GateError
from kd_edge.gate import Budget, evaluate_budgets

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
    with pytest.raises(GateError, match="no value for it"):
        evaluate_budgets(REPORT, [Budget(artifact="student.int8.onnx", metric="max_abs_diff", max=1)])


def test_budget_needs_a_bound():
    with pytest.raises(ValueError, match="needs `min` or `max`"):
        Budget(artifact="teacher", metric="x")
