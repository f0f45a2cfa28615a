"""The gate: budgets (bounds on report metrics) -> verdict -> exit code.

A budget bounds one metric of one report row (teacher, student or an artifact, optionally on one
benchmark target): absolutely (``min`` / ``max``: size, latency, a task metric, a speed-up or quality
drop relative to the teacher measured in the same run) or against a baseline report
(``max_regression``: the largest relative change for the worse).

A broken budget is not an error: `kd-edge gate` and `kd-edge run` print the verdict and exit 1. A
budget that cannot be checked (unknown row or metric, no baseline) is a GateError: exit 2.
"""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kd_edge.registry import closest

# Metrics where a smaller value is better; every other numeric metric is better when larger.
_LOWER_IS_BETTER = re.compile(r"(_ms$|_mb$|_bytes$|^params$|^macs|kl_|jsd|^ece$|perplexity|diff|_drop$|size_ratio)")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (latency, size, divergence, error)."""
    return bool(_LOWER_IS_BETTER.search(metric))


class Budget(BaseModel):
    """One bound on one metric of one row of the report (teacher, student, or an artifact)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artifact: str = Field(description="Report row: `teacher`, `student`, or an artifact like student.int8.onnx.")
    metric: str = Field(description="A column of that row, e.g. latency_p90_ms, file_size_mb, speedup_p50, "
                                    "accuracy, accuracy_drop.")
    target: str | None = Field(None, description="Benchmark target of the row (e.g. local, rpi5); null: the row's own.")
    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")
    max_regression: float | None = Field(
        None, ge=0, description="Against --baseline: the metric may get worse by at most this fraction "
        "(0.05 = 5 %), in its bad direction (latency up, accuracy down...).")

    @model_validator(mode="after")
    def _has_bound(self) -> "Budget":
        if self.min is None and self.max is None and self.max_regression is None:
            raise ValueError(f"budget on {self.artifact}.{self.metric} needs `min`, `max` or `max_regression`")
        return self


class GateConfig(BaseModel):
    """Budgets checked after the report; a broken budget makes `kd-edge run` and `kd-edge gate` exit 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budgets: list[Budget] = Field(default_factory=list, description="The budgets; empty means no gate.")
    baseline: str | None = Field(None, description="A baseline report.json for `max_regression` budgets.")
    reliable_only: bool = Field(
        False, description="A budget on a speed figure (latency, speed-up, throughput) that was measured on a busy "
        "machine fails instead of counting; without this it counts and is marked unreliable.")


_SPEED = re.compile(r"^(latency_|speedup_|throughput|prefill_tokens|load_ms)")


def speed_metric(metric: str) -> bool:
    """Whether ``metric`` is a timing, whose value a busy machine distorts."""
    return bool(_SPEED.search(metric))


def unreliable(report: dict, row: dict, metric: str) -> list[str]:
    """Why the ``metric`` of ``row`` cannot be trusted (the machine was busy while it, or for a
    speed-up the teacher it is divided by, was measured); empty when it can."""
    if not speed_metric(metric):
        return []
    rows = [row]
    if metric.startswith("speedup_") and report.get("rows"):
        rows.append(report["rows"][0])  # the baseline of every speed-up
    why = []
    for r in rows:
        for flag in r.get("latency_flags") or []:
            why.append(f"{r['name']}: {flag}")
    return why


_CHECK = re.compile(r"^(?P<row>[^:@\s]+)(@(?P<target>[^:\s]+))?:(?P<metric>\w+)\s*"
                    r"(?P<op><=|>=|regress<=)\s*(?P<value>[-+0-9.eE]+)(?P<pct>%)?$")


def parse_check(text: str) -> Budget:
    """A budget from a command-line check: ``ROW[@TARGET]:METRIC<=X``, ``...>=X`` or ``...regress<=5%``."""
    from kd_edge.errors import GateError

    m = _CHECK.match(text.strip())
    if not m:
        raise GateError(f"--check '{text}' is not ROW[@TARGET]:METRIC<=X, ROW:METRIC>=X or ROW:METRIC regress<=5%; "
                        "e.g. --check 'student.int8.onnx:latency_p90_ms<=10'")
    value = float(m["value"]) / (100 if m["pct"] else 1)
    bound = {"<=": "max", ">=": "min", "regress<=": "max_regression"}[m["op"]]
    return Budget(artifact=m["row"], target=m["target"], metric=m["metric"], **{bound: value})


def _row(report: dict, budget: Budget, which: str) -> dict:
    from kd_edge.errors import GateError

    rows = [r for r in report["rows"]
            if r["name"] == budget.artifact and (budget.target is None or r.get("target") == budget.target)]
    if not rows:
        names = sorted({r["name"] + (f"@{r['target']}" if r.get("target") else "") for r in report["rows"]})
        raise GateError(f"budget names '{budget.artifact}'" + (f" on target '{budget.target}'" if budget.target else "")
                        + f", which is not a row of the {which} report (rows: {', '.join(names)}); fix the budget")
    return rows[0]


def _value(report: dict, budget: Budget, which: str = "") -> float:
    from kd_edge.errors import GateError

    row = _row(report, budget, which or "")
    if budget.metric not in row:
        numeric = sorted(k for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise GateError(f"budget on {budget.artifact}: the {which + ' ' if which else ''}report has no metric "
                        f"'{budget.metric}'{closest(budget.metric, numeric)} (metrics: {', '.join(numeric)})")
    value = row[budget.metric]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GateError(f"budget on {budget.artifact}.{budget.metric}: the {which + ' ' if which else ''}report has "
                        "no number for it (was that stage skipped or did it fail?); check the report")
    return float(value)


def evaluate_budgets(report: dict, budgets: list[Budget], baseline: dict | None = None,
                     reliable_only: bool = False) -> dict:
    """Check every budget against a report document; return the verdict with one record per check.
    A speed figure measured on a busy machine is marked ``unreliable``; with ``reliable_only`` its
    budget fails."""
    from kd_edge.errors import GateError

    checks = []
    for b in budgets:
        value = _value(report, b)
        doubts = unreliable(report, _row(report, b, ""), b.metric)
        parts, ok = [], True
        if b.min is not None:
            parts.append(f">= {b.min:g}")
            ok &= value >= b.min
        if b.max is not None:
            parts.append(f"<= {b.max:g}")
            ok &= value <= b.max
        record: dict[str, Any] = {"artifact": b.artifact, "target": b.target, "metric": b.metric, "value": value}
        if b.max_regression is not None:
            if baseline is None:
                raise GateError(f"budget on {b.artifact}.{b.metric} has max_regression but no baseline report was "
                                "given; pass --baseline BASELINE/report.json")
            old = _value(baseline, b, "baseline")
            worse = (value - old) if lower_is_better(b.metric) else (old - value)
            change = worse / abs(old) if old else (0.0 if worse <= 0 else float("inf"))
            parts.append(f"worse by <= {b.max_regression * 100:g} % of {old:.4g}")
            record.update({"baseline": old, "regression": change})
            ok &= change <= b.max_regression
        if doubts:
            record["unreliable"] = doubts
            if reliable_only:
                ok = False
                record["refused"] = "measured on a busy machine (gate.reliable_only)"
        record.update({"bound": " and ".join(parts), "passed": bool(ok)})
        checks.append(record)
    n_ok = sum(c["passed"] for c in checks)
    return {"passed": n_ok == len(checks), "n_budgets": len(checks), "n_passed": n_ok, "checks": checks,
            "n_unreliable": sum(bool(c.get("unreliable")) for c in checks), "reliable_only": reliable_only}


def check_row(check: dict) -> str:
    """The row a verdict's check bounds, as budgets name it: ``student.int8.onnx`` or ``student@pi``."""
    return check["artifact"] + (f"@{check['target']}" if check.get("target") else "")


def verdict_table(verdict: dict) -> str:
    """The verdict as a plain-text table for the terminal."""
    lines = [f"{'row':<24} {'metric':<22} {'bound':<30} {'value':>12}  verdict"]
    for c in verdict["checks"]:
        row = check_row(c)
        lines.append(f"{row:<24} {c['metric']:<22} {c['bound']:<30} {c['value']:>12.4g}  "
                     f"{'pass' if c['passed'] else 'FAIL'}{_doubt(c)}")
    lines.append(f"gate {'PASSED' if verdict['passed'] else 'FAILED'}: {verdict['n_passed']}/{verdict['n_budgets']} budgets hold"
                 + _unreliable_note(verdict))
    return "\n".join(lines)


def _doubt(check: dict) -> str:
    if check.get("refused"):
        return f" (refused: {check['refused']})"
    return " (unreliable: busy machine)" if check.get("unreliable") else ""


def _unreliable_note(verdict: dict) -> str:
    n = verdict.get("n_unreliable") or 0
    if not n:
        return ""
    return (f"; {n} on figures measured on a busy machine"
            + ("" if verdict.get("reliable_only") else " (counted; gate.reliable_only or --reliable-only refuses them)"))


def verdict_markdown(verdict: dict) -> str:
    """The verdict as Markdown (a CI job summary or pull-request comment)."""
    lines = [f"### kd-edge gate: {'PASSED' if verdict['passed'] else 'FAILED'} "
             f"({verdict['n_passed']}/{verdict['n_budgets']} budgets)", "",
             "| row | metric | bound | value | verdict |", "|---|---|---|---:|---|"]
    for c in verdict["checks"]:
        row = check_row(c)
        lines.append(f"| {row} | {c['metric']} | {c['bound']} | {c['value']:.4g} | "
                     f"{'pass' if c['passed'] else '**FAIL**'}{_doubt(c)} |")
    note = _unreliable_note(verdict)
    return "\n".join(lines) + ("\n\n" + note.lstrip("; ").capitalize() + "." if note else "") + "\n"


def verdict_junit(verdict: dict, name: str = "kd-edge gate") -> str:
    """The verdict as JUnit XML: one test case per budget, a failure for each broken one."""
    cases = []
    for c in verdict["checks"]:
        row = check_row(c)
        case = f"  <testcase classname={quoteattr(row)} name={quoteattr(c['metric'] + ' ' + c['bound'])}>"
        if not c["passed"]:
            message = quoteattr(f"{c['value']:.6g} breaks {c['bound']}")
            case += f"\n    <failure message={message}>{escape(repr(c))}</failure>\n  "
        cases.append(case + "</testcase>")
    failures = verdict["n_budgets"] - verdict["n_passed"]
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name={quoteattr(name)} tests="{verdict["n_budgets"]}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def run(recipe, ctx) -> None:
    """The ``gate`` stage: check the recipe's budgets against report.json; write gate.json."""
    import json
    from pathlib import Path

    from kd_edge.artifacts import write_json
    from kd_edge.errors import GateError
    from kd_edge.runfiles import RunFiles, report_file

    files = RunFiles(ctx.run_dir)
    report = json.loads(files.report_json.read_text())
    baseline = None
    if recipe.gate.baseline:
        path = report_file(Path(recipe.gate.baseline))
        if not path.is_file():
            raise GateError(f"gate.baseline '{recipe.gate.baseline}' has no report.json; point it at a baseline run")
        baseline = json.loads(path.read_text())
    write_json(files.gate, evaluate_budgets(report, recipe.gate.budgets, baseline,
                                                           reliable_only=recipe.gate.reliable_only))
