"""`kd-edge distill`: the stages up to a distilled, evaluated student."""

from __future__ import annotations

import typer

from kd_edge.cli import app
from kd_edge.cli.options import ForceOpt, OutOpt, QuietOpt, RecipeArg, ResumeOpt, SetOpt


@app.command("distill")
def distill_command(recipe: RecipeArg = None, out: OutOpt = None, set_: SetOpt = None, resume: ResumeOpt = False,
                    force: ForceOpt = False, quiet: QuietOpt = False) -> None:
    """Build the student and distill it from the teacher, then evaluate both; stops before export.

    Examples:

      kd-edge distill models/minilm-l6-to-l2.yaml

      kd-edge distill my-recipe.yaml --set distill.epochs=5 --out runs/longer
    """
    from kd_edge.cli.run import execute

    raise typer.Exit(execute(recipe, out, set_, resume=resume, force=force, quiet=quiet, stop_after="evaluate"))
