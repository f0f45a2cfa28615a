"""`kd-edge gate`: check budgets against a report; the exit code is the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.cli import app


def _read_report(path: Path, what: str) -> dict:
    import json

    from kd_edge.errors import ArtifactError

    from kd_edge.paths import read_text

    from kd_edge.runfiles import report_file

    path = report_file(path)
    if not path.is_file():
        raise ArtifactError(f"no {what} at {path}; pass a run folder or a report.json written by kd-edge")
    try:
        report = json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e.msg}); re-render it with `kd-edge report`") from e
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise ArtifactError(f"{path} is not a kd-edge report (no rows); pass a run folder or its report.json")
    return report


@app.command("gate")
def gate_command(
    target: Annotated[Path, typer.Argument(help="A run folder or its report.json.", show_default=False)],
    budget: Annotated[Optional[Path], typer.Option(
        "--budget", "-b", help="YAML file with `budgets:` (default: the run's recipe gate).", show_default=False)] = None,
    check: Annotated[Optional[list[str]], typer.Option(
        "--check", "-c", help="A budget on the command line: ROW\\[@TARGET]:METRIC<=X, >=X or regress<=5% "
        "(repeatable; added to --budget).", show_default=False)] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", help="Baseline run folder or report.json for `max_regression` / regress budgets.",
        show_default=False)] = None,
    markdown: Annotated[Optional[Path], typer.Option(
        "--markdown", help="Also write the verdict as Markdown (e.g. $GITHUB_STEP_SUMMARY).", show_default=False)] = None,
    junit: Annotated[Optional[Path], typer.Option(
        "--junit", help="Also write the verdict as JUnit XML (one test case per budget).", show_default=False)] = None,
    reliable_only: Annotated[bool, typer.Option(
        "--reliable-only", help="Fail speed budgets whose figures were measured on a busy machine.")] = False,
) -> None:
    """Check size, latency and quality budgets against a report (exit 0 pass, 1 broken, 2 bad input).

    A budget is {artifact: ROW, metric: COLUMN, min: X, max: Y, max_regression: F, target: T}; rows are
    teacher, student and each artifact (student.int8.onnx...); columns are those of report.json
    (latency_p90_ms, file_size_mb, speedup_p50, accuracy, accuracy_drop, max_abs_diff, ...). Relative
    budgets hold on noisy CI machines: speedup_p50 compares with the teacher measured in the same run.

    Examples:

      kd-edge gate runs/minilm-l6-to-l2

      kd-edge gate runs/new --baseline runs/main --check 'student.int8.onnx:latency_p50_ms regress<=10%'

      kd-edge gate runs/new/report.json --budget budgets.yaml --markdown "$GITHUB_STEP_SUMMARY" --junit gate.xml
    """
    from pydantic import ValidationError

    from kd_edge.artifacts import write_text
    from kd_edge.config import parse_yaml, validation_message
    from kd_edge.errors import GateError
    from kd_edge.gate import GateConfig, evaluate_budgets, parse_check, verdict_junit, verdict_markdown, verdict_table
    from kd_edge.paths import output_file, read_text
    from kd_edge.runfiles import report_file, resolved_recipe_beside

    for option, value in (("--markdown", markdown), ("--junit", junit)):
        if value is not None:  # a CI summary file may exist already: it is written, not refused
            output_file(value, option, force=True, parents=False, example="gate.md")
    report = _read_report(target, "report")
    data: dict = {}
    source = "--check"
    if budget is not None:
        if not budget.is_file():
            raise GateError(f"budget file '{budget}' does not exist; write one with `budgets:` (see `kd-edge gate --help`)")
        source, data = str(budget), parse_yaml(read_text(budget, "--budget"), str(budget))
    elif not check:
        resolved = resolved_recipe_beside(report_file(target))
        if not resolved.is_file():
            raise GateError("no --budget or --check given and no recipe beside the report; pass --budget budgets.yaml")
        source, data = str(resolved), parse_yaml(read_text(resolved, "the run's recipe"), str(resolved)).get("gate") or {}
    try:
        cfg = GateConfig.model_validate(data)
    except ValidationError as e:
        raise GateError(validation_message(e, source) + "; a budget is {artifact, metric, min / max / max_regression}") from e
    budgets = list(cfg.budgets) + [parse_check(c) for c in check or []]
    if not budgets:
        raise GateError(f"{source} lists no budgets; add some under `budgets:` or pass --check")
    base_path = baseline or (Path(cfg.baseline) if cfg.baseline else None)
    base = _read_report(base_path, "baseline report") if base_path else None
    verdict = evaluate_budgets(report, budgets, base, reliable_only=reliable_only or cfg.reliable_only)
    typer.echo(verdict_table(verdict))
    if markdown is not None:
        write_text(markdown, verdict_markdown(verdict))
    if junit is not None:
        write_text(junit, verdict_junit(verdict))
    raise typer.Exit(0 if verdict["passed"] else 1)
