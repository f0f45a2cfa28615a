"""`kd-edge gate`: check budgets against a report; the exit code is the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.cli import app


@app.command("gate")
def gate_command(
    target: Annotated[Path, typer.Argument(help="A run folder or its report.json.", show_default=False)],
    budget: Annotated[Optional[Path], typer.Option(
        "--budget", "-b", help="YAML file with `budgets:` (default: the run's recipe gate).", show_default=False)] = None,
    markdown: Annotated[Optional[Path], typer.Option(
        "--markdown", help="Also write the verdict as Markdown (e.g. $GITHUB_STEP_SUMMARY).", show_default=False)] = None,
) -> None:
    """Check size, latency and quality budgets against a report. Exit 0 when every budget holds, 1 when
    one is broken, 2 when the budgets or the report cannot be read.

    A budget is {artifact: ROW, metric: COLUMN, min: X, max: Y}; rows are teacher, student and each
    artifact (student.int8.onnx...); columns are those of report.json (latency_p50_ms, file_size_mb,
    speedup_p50, probe_accuracy, probe_accuracy_ratio, max_abs_diff, ...).

    Examples:

      kd-edge gate runs/minilm-l6-to-l2

      kd-edge gate runs/minilm-l6-to-l2/report.json --budget budgets.yaml --markdown summary.md
    """
    import yaml
    from pydantic import ValidationError

    from kd_edge.artifacts import write_text
    from kd_edge.config import parse_yaml, validation_message
    from kd_edge.errors import ArtifactError, GateError
    from kd_edge.gate import GateConfig, evaluate_budgets, verdict_table

    report_path = target / "report.json" if target.is_dir() else target
    if not report_path.is_file():
        raise ArtifactError(f"no report at {report_path}; pass a run folder or a report.json written by kd-edge")
    try:
        import json

        report = json.loads(report_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{report_path} is not valid JSON ({e.msg}); re-render it with `kd-edge report`") from e
    if budget is not None:
        if not budget.is_file():
            raise GateError(f"budget file '{budget}' does not exist; write one with `budgets:` (see `kd-edge gate --help`)")
        source, data = str(budget), parse_yaml(budget.read_text(), str(budget))
    else:
        resolved = report_path.parent / "recipe.resolved.yaml"
        if not resolved.is_file():
            raise GateError(f"no --budget given and no recipe beside {report_path}; pass --budget budgets.yaml")
        source, data = str(resolved), (yaml.safe_load(resolved.read_text()) or {}).get("gate") or {}
    try:
        cfg = GateConfig.model_validate(data)
    except ValidationError as e:
        raise GateError(validation_message(e, source) + "; a budget is {artifact, metric, min and/or max}") from e
    if not cfg.budgets:
        raise GateError(f"{source} lists no budgets; add some under `budgets:`")
    verdict = evaluate_budgets(report, cfg.budgets)
    typer.echo(verdict_table(verdict))
    if markdown is not None:
        lines = ["| row | metric | bound | value | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {c['artifact']} | {c['metric']} | {c['bound']} | {c['value']:.4g} | {'pass' if c['passed'] else '**FAIL**'} |"
                  for c in verdict["checks"]]
        write_text(markdown, f"### kd-edge gate: {'PASSED' if verdict['passed'] else 'FAILED'}\n\n" + "\n".join(lines) + "\n")
    raise typer.Exit(0 if verdict["passed"] else 1)
