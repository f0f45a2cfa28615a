"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

RecipeArg = Annotated[Optional[str], typer.Argument(
    help="Recipe YAML file or bundled recipe name; default: the MiniLM-L6 -> 1-layer recipe.", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="A run folder written by `kd-edge run`.", show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="Run folder; default runs/<recipe name>.", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override a recipe key, e.g. --set distill.epochs=1 (repeatable).", show_default=False)]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Reuse a folder holding another run's stages where they are still valid.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo every stage, replacing what the folder holds.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]

# The flags that set a recipe key for the commands that have them: the library's errors name the key
# (``bench.host``), and the command line adds the flag (``--host``), or ``--set`` where a command has that.
RECIPE_FLAGS = {"bench.target": "--target", "bench.host": "--host", "bench.serial": "--serial",
                "bench.key_file": "--key", "bench.known_hosts": "--known-hosts", "bench.python": "--python",
                "bench.batch_size": "--batch", "bench.seq_len": "--seq", "bench.rounds": "--rounds",
                "bench.runs": "--runs", "export.tflite_shapes": "--shapes", "export.artifacts": "--format"}
