"""`kd-edge init`: write a commented starter recipe to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.cli import app
from kd_edge.tasks.kinds import KINDS


@app.command("init")
def init_command(
    path: Annotated[Path, typer.Argument(help="Where to write the recipe.")] = Path("recipe.yaml"),
    task: Annotated[str, typer.Option(
        help=f"One of: {', '.join(KINDS)}.")] = "sentence_embedding",
    teacher: Annotated[Optional[str], typer.Option(help="Teacher folder or hub id to put in the recipe.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Data file (.jsonl/.csv/.tsv/.txt) or save_to_disk folder; "
                                                     "its columns are read to fill the recipe in.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter recipe for a task, with your teacher and data if given.

    The recipe names the text and label columns it finds in --data and explains every key it sets;
    `kd-edge run RECIPE` checks it against the teacher and the data before any stage runs.

    Examples:

      kd-edge init

      kd-edge init my-recipe.yaml --teacher ./my-encoder --data ./sentences.jsonl

      kd-edge init clf.yaml --task sequence_classification --teacher ./my-classifier --data reviews.csv

      kd-edge init lm.yaml --task causal_lm --teacher ./my-llama --data corpus.txt
    """
    from kd_edge.errors import ConfigError
    from kd_edge.paths import output_file
    from kd_edge.starter import starter_recipe

    output_file(path, "PATH", force=force, parents=False, example="recipe.yaml",
                overwrite_hint="choose another path or pass --force to overwrite it")
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"PATH '{path}' should end in .yaml (kd-edge run finds recipes by it); e.g. {path.stem}.yaml")
    if teacher:
        from kd_edge.tasks.hub import resolve_model_dir

        looks_local = teacher.startswith((".", "/", "~")) or Path(teacher).expanduser().exists() or teacher.count("/") != 1
        if looks_local and not teacher.startswith("package:"):
            resolve_model_dir(teacher, what="--teacher")  # a local folder must exist and hold config.json
    text = starter_recipe(task, path, teacher, data)
    from kd_edge.artifacts import write_text

    write_text(path, text)
    typer.echo(f"wrote {path} ({task}); edit it, then: kd-edge run {path}")
