"""`kd-edge sweep`: a recipe's variants over a grid of keys, compared in one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.cli import app
from kd_edge.cli.options import ForceOpt, QuietOpt, RecipeArg, SetOpt


@app.command("sweep")
def sweep_command(
    recipe: RecipeArg = None,
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", "-g", help="A recipe key and the values to try, key=v1,v2 (repeatable: every combination runs); "
        "a value with commas as a YAML list: key=[[2, 5], [1, 5]].", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Sweep folder (one run folder per variant inside); default runs/<recipe name>-sweep.",
        show_default=False)] = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a recipe's variants over a grid of keys on one shared teacher cache, and report the smallest
    file that still meets the recipe's gate.

    Each variant is a run folder of its own (runs as `kd-edge run` does, so a stopped sweep started again
    with the same command continues where it stopped). sweep_report.html / .md / .json compare every
    exported file of every variant: size, latency on the recipe's target, quality, the Pareto front of the
    three, and the smallest file of a variant whose gate passed. Exit 0 when some variant meets the gate
    (or the recipe has none), 1 when none does, 2 on bad input.

    Examples:

      kd-edge sweep --set student.init=prune --grid student.intermediate_size=384,512,768 --grid student.layers=1,2

      kd-edge sweep my-recipe.yaml --grid distill.lr=1e-4,5e-4 --set distill.epochs=1 --out runs/lr-sweep

      kd-edge sweep --grid 'student.layers=[[2, 5], [1, 3, 5]]' --grid student.vocabulary=teacher,trim
    """
    from kd_edge.config import find_recipe, parse_yaml, apply_overrides, recipe_from_dict
    from kd_edge.paths import output_dir, read_text
    from kd_edge.sweep import parse_axis, run_sweep, summary_lines, variants

    path = find_recipe(recipe)
    base = apply_overrides(parse_yaml(read_text(path, "recipe", "pass a readable .yaml recipe"), str(path)), set_ or [])
    name = recipe_from_dict(base, str(path)).name
    axes = [parse_axis(g) for g in grid or []]
    grid_size = len(variants(axes))
    out = output_dir(out or Path("runs") / f"{name}-sweep", "--out")
    typer.echo(f"kd-edge sweep: recipe {path}, {grid_size} variants -> {out}")

    def on_variant(i: int, n: int, v: dict, status: str) -> None:
        values = ", ".join(f"{k}={val}" for k, val in v["values"].items())
        if status == "running":
            typer.echo(f"\n== variant {i + 1}/{n}: {v['name']} ({values})")
        else:
            typer.echo(f"== variant {i + 1}/{n}: {status}")

    from kd_edge.cli.printing import stage_printer

    doc = run_sweep(base, str(path), axes, list(set_ or []), out, force=force, progress=not quiet,
                    on_variant=on_variant, on_event=stage_printer())
    typer.echo("")
    for line in summary_lines(doc):
        typer.echo(line)
    typer.echo(f"report: {doc['paths']['html']}  (also {Path(doc['paths']['md']).name}, {Path(doc['paths']['json']).name})")
    gated = [v for v in doc["variants"] if v.get("gate_passed") is not None]
    raise typer.Exit(1 if gated and doc["smallest_passing"] is None else 0)
