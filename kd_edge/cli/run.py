"""`kd-edge run`: the whole job, from recipe to report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kd_edge.cli import app
from kd_edge.cli.options import ForceOpt, OutOpt, QuietOpt, RecipeArg, ResumeOpt, SetOpt


def execute(recipe_ref, out: Path | None, overrides, *, resume: bool, force: bool, quiet: bool,
            stop_after: str | None = None, only: tuple[str, ...] | None = None, from_run: Path | None = None,
            check: bool = False) -> int:
    """Load, check and run a recipe (or a run folder's own recipe); print progress and the outcome."""
    from kd_edge.config import load_recipe
    from kd_edge.errors import ConfigError
    from kd_edge.pipeline import run_pipeline
    from kd_edge.runfiles import RunFiles
    from kd_edge.preflight import resolve
    from kd_edge.cli.printing import stage_printer

    if resume and force:
        raise ConfigError("--resume and --force contradict each other; pass one of them")
    if from_run is not None:
        resolved = RunFiles(from_run).resolved_recipe
        if not resolved.is_file():
            raise ConfigError(f"{from_run} is not a kd-edge run folder ({resolved.name} missing); pass the folder "
                              "`kd-edge run` wrote, e.g. runs/minilm-l6-to-l2")
        recipe, source = load_recipe(resolved, overrides)
        out, resume = from_run, True
    else:
        recipe, source = load_recipe(recipe_ref, overrides)
    from kd_edge.paths import output_dir

    out = output_dir(out or Path("runs") / recipe.name, "--out")
    recipe = resolve(recipe)
    if check:
        from kd_edge.stages import STAGES

        names = [st.name for st in STAGES if st.is_enabled(recipe)]
        typer.echo(f"recipe {source} is valid: {recipe.task}, teacher {recipe.teacher.model}, data {recipe.data.source}, "
                   f"{len(recipe.export.artifacts)} exported file(s); stages: {', '.join(names)}; would write {out}")
        return 0
    from kd_edge.artifacts import distributed_rank

    if distributed_rank()[0] > 0:  # accelerate launch: only the first process talks
        run_pipeline(recipe, out, resume=resume, force=force, stop_after=stop_after, only=only, progress=False)
        return 0
    typer.echo(f"kd-edge: recipe {source} -> {out}")
    from kd_edge.manifest import older_key_format

    if resume and older_key_format(out):
        typer.echo("note: this run was made by an older kd-edge, whose stage keys did not record each stage's "
                   "code: its stages are redone once; from then on a new kd-edge redoes only the stages it changed")
    result = run_pipeline(recipe, out, resume=resume, force=force, stop_after=stop_after, only=only,
                          progress=not quiet, on_event=stage_printer())
    if not result.ran:
        typer.echo("nothing to do: every stage is up to date (--force redoes them)")
    report = RunFiles(out).report_html
    if report.is_file() and (stop_after is None or stop_after in ("report", "gate")):
        from kd_edge.report.render import headline
        from kd_edge.report.run import load_report

        typer.echo("")
        for line in headline(load_report(out)):
            typer.echo(line)
        typer.echo(f"report: {report}  (also report.md, report.json)")
    if result.gate and result.gate.get("n_budgets"):
        from kd_edge.gate import verdict_table

        typer.echo("")
        typer.echo(verdict_table(result.gate))
        return 0 if result.gate["passed"] else 1
    return 0


@app.command("run")
def run_command(recipe: RecipeArg = None, out: OutOpt = None, set_: SetOpt = None, resume: ResumeOpt = False,
                force: ForceOpt = False, quiet: QuietOpt = False,
                check: Annotated[bool, typer.Option("--check", help="Check the recipe against its teacher, data and "
                                                    "targets, print what would run, and stop (writes nothing).")] = False,
                ) -> None:
    """Distill, evaluate, export, verify, benchmark, report and gate: the whole job, one command.

    Stages already done with the same inputs are skipped, so a stopped run continues where it
    stopped, and a finished one returns at once. Exit 0 when done (and every gate budget holds), 1
    when a budget is broken, 2 on bad input.

    Examples:

      kd-edge run                                   # the bundled MiniLM-L6 -> 1-layer recipe

      kd-edge run my-recipe.yaml --out runs/try1

      kd-edge run --set distill.epochs=1 --set data.max_samples=2000 --out runs/quick

      kd-edge run my-recipe.yaml --check             # is the recipe right? (nothing runs)
    """
    raise typer.Exit(execute(recipe, out, set_, resume=resume, force=force, quiet=quiet, check=check))
