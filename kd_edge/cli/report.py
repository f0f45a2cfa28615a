"""`kd-edge report`: render a run's report again."""

from __future__ import annotations

import typer

from kd_edge.cli import app
from kd_edge.cli.options import RunDirArg


@app.command("report")
def report_command(run_dir: RunDirArg) -> None:
    """Write report.json, report.md and report.html of a run again from its records.

    Examples:

      kd-edge report runs/minilm-l6-to-l2

      xdg-open runs/minilm-l6-to-l2/report.html
    """
    from kd_edge.cli.run import execute

    raise typer.Exit(execute(None, None, None, resume=False, force=True, quiet=True, stop_after="report",
                             only=("report",), from_run=run_dir))
