"""`kd-edge report`: render a run's report again, or compare two reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.cli import app


@app.command("report")
def report_command(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A run folder written by `kd-edge run`.", show_default=False)] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(
        "--compare", help="Two run folders or report.json files, BASELINE NEW: print what changed.",
        show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="With --compare: also write the Markdown here.",
                                                show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="With --out: replace an existing file.")] = False,
) -> None:
    """Write report.json, report.md and report.html of a run again, or compare two reports.

    Examples:

      kd-edge report runs/minilm-l6-to-l2

      kd-edge report --compare runs/main runs/my-branch --out changes.md
    """
    from kd_edge.errors import ConfigError

    if compare is not None:
        from kd_edge.artifacts import write_text
        from kd_edge.paths import output_file

        if out is not None:
            output_file(out, "--out", force=force, parents=False, example="changes.md")
        from kd_edge.cli.gate import _read_report
        from kd_edge.report.compare import compare as diff_reports
        from kd_edge.report.compare import to_markdown

        text = to_markdown(diff_reports(_read_report(compare[0], "baseline report"), _read_report(compare[1], "report")))
        typer.echo(text)
        if out is not None:
            write_text(out, text)
        return
    if out is not None or force:
        raise ConfigError("--out and --force go with --compare; re-rendering writes report.* inside the run folder")
    if run_dir is None:
        raise ConfigError("nothing to report; pass a run folder to re-render, or --compare BASELINE NEW")
    from kd_edge.paths import input_dir

    input_dir(run_dir, "RUN_DIR", "pass a folder written by `kd-edge run`")
    from kd_edge.cli.run import execute

    raise typer.Exit(execute(None, None, None, resume=False, force=True, quiet=True, stop_after="report",
                             only=("report",), from_run=run_dir))
