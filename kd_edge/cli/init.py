"""`kd-edge init`: write a starter recipe to edit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.cli import app


@app.command("init")
def init_command(
    path: Annotated[Path, typer.Argument(help="Where to write the recipe.")] = Path("recipe.yaml"),
    teacher: Annotated[Optional[str], typer.Option(help="Teacher folder or hub id to put in the recipe.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Data file (.jsonl/.csv/.txt) to put in the recipe.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter recipe (the bundled MiniLM recipe, with your teacher and data if given).

    Examples:

      kd-edge init

      kd-edge init my-recipe.yaml --teacher ./my-encoder --data ./sentences.jsonl
    """
    from kd_edge.config import default_recipe_path
    from kd_edge.errors import ConfigError

    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; choose another path or pass --force to overwrite it")
    text = default_recipe_path().read_text()
    text = re.sub(r"^name: .*$", f"name: {path.stem}", text, count=1, flags=re.M)
    if teacher:
        text = re.sub(r"^  model: .*$", f"  model: {teacher}", text, count=1, flags=re.M)
    if data:
        text = re.sub(r"^  source: .*$", f"  source: {data}", text, count=1, flags=re.M)
        text = re.sub(r"^  where: .*$", "  where: {}", text, count=1, flags=re.M)
    path.write_text(text)
    typer.echo(f"wrote {path}; edit it, then: kd-edge run {path}")
