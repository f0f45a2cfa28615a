"""The ``report`` stage: report.json, report.md and report.html at the top of the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.artifacts import StageContext, write_json, write_text
from kd_edge.gate import evaluate_budgets
from kd_edge.report.build import build_report
from kd_edge.report.render import to_html, to_markdown
from kd_edge.report.schema import validate
from kd_edge.runfiles import RunFiles, report_file

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def render_run(run_dir: Path, recipe: "Recipe") -> dict:
    """Build and write the three report files of a run folder; return the document."""
    report = build_report(run_dir, recipe.model_dump(mode="json"))
    if recipe.gate.budgets and not recipe.gate.baseline:
        report["gate"] = evaluate_budgets(report, recipe.gate.budgets)
    validate(report)  # a report that breaks its own schema is a kd-edge bug: fail loudly
    files = RunFiles(run_dir)
    write_json(files.report_json, report)
    write_text(files.report_md, to_markdown(report))
    write_text(files.report_html, to_html(report))
    if files.student.is_dir():
        from kd_edge.report.build import teacher_folder
        from kd_edge.report.card import model_card
        from kd_edge.runfiles import student_meta

        recipe_doc = recipe.model_dump(mode="json")
        write_text(files.model_card, model_card(report, recipe_doc, teacher_folder(recipe_doc), student_meta(files.student)))
    return report


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write report.json, report.md, report.html."""
    render_run(ctx.run_dir, recipe)


def load_report(path: Path) -> dict:
    """A report.json, from a run folder or the file itself."""
    return json.loads(report_file(Path(path)).read_text())
