"""The gate: budgets (bounds on report metrics) -> verdict -> exit code.

A broken budget is not an error: `kd-edge gate` and `kd-edge run` print the verdict and exit 1. A
budget that cannot be checked (unknown row or metric) is a GateError: exit 2.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kd_edge.registry import closest


class Budget(BaseModel):
    """One bound on one metric of one row of the report (teacher, student, or an artifact)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artifact: str = Field(description="Report row: `teacher`, `student`, or an artifact like student.int8.onnx.")
    metric: str = Field(description="A column of that row, e.g. latency_p50_ms, file_size_mb, speedup_p50.")
    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")

    @model_validator(mode="after")
    def _has_bound(self) -> "Budget":
        if self.min is None and self.max is None:
            raise ValueError(f"budget on {self.artifact}.{self.metric} needs `min` or `max`")
        return self


class GateConfig(BaseModel):
    """Budgets checked after the report; a broken budget makes `kd-edge run` and `kd-edge gate` exit 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budgets: list[Budget] = Field(default_factory=list, description="The budgets; empty means no gate.")


def _row_value(report: dict, budget: Budget) -> float:
    from kd_edge.errors import GateError

    rows = {r["name"]: r for r in report["rows"]}
    if budget.artifact not in rows:
        raise GateError(f"budget names '{budget.artifact}', which is not a row of the report "
                        f"(rows: {', '.join(rows)}); fix the budget's artifact")
    row = rows[budget.artifact]
    if budget.metric not in row:
        numeric = sorted(k for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise GateError(f"budget on {budget.artifact}: the report has no metric '{budget.metric}'"
                        f"{closest(budget.metric, numeric)} (metrics: {', '.join(numeric)})")
    value = row[budget.metric]
    if value is None:
        raise GateError(f"budget on {budget.artifact}.{budget.metric}: the report has no value for it "
                        "(was that stage skipped or did it fail?); check the report")
    return float(value)


def evaluate_budgets(report: dict, budgets: list[Budget]) -> dict:
    """Check every budget against a report document; return the verdict with one record per check."""
    checks = []
    for b in budgets:
        value = _row_value(report, b)
        ok = (b.min is None or value >= b.min) and (b.max is None or value <= b.max)
        bound = " and ".join(s for s in (f">= {b.min:g}" if b.min is not None else "",
                                          f"<= {b.max:g}" if b.max is not None else "") if s)
        checks.append({"artifact": b.artifact, "metric": b.metric, "bound": bound, "value": value, "passed": ok})
    n_ok = sum(c["passed"] for c in checks)
    return {"passed": n_ok == len(checks), "n_budgets": len(checks), "n_passed": n_ok, "checks": checks}


def verdict_table(verdict: dict) -> str:
    """The verdict as a plain-text table for the terminal."""
    lines = [f"{'row':<24} {'metric':<22} {'bound':<18} {'value':>12}  verdict"]
    for c in verdict["checks"]:
        lines.append(f"{c['artifact']:<24} {c['metric']:<22} {c['bound']:<18} {c['value']:>12.4g}  "
                     f"{'pass' if c['passed'] else 'FAIL'}")
    lines.append(f"gate {'PASSED' if verdict['passed'] else 'FAILED'}: {verdict['n_passed']}/{verdict['n_budgets']} budgets hold")
    return "\n".join(lines)


def run(recipe, ctx) -> None:
    """The ``gate`` stage: check the recipe's budgets against report.json; write gate.json."""
    import json

    from kd_edge.artifacts import write_json

    report = json.loads((ctx.run_dir / "report.json").read_text())
    write_json(ctx.run_dir / "gate.json", evaluate_budgets(report, recipe.gate.budgets))
