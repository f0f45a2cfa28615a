"""`kd-edge export`: (re)write and verify the deployable files of a run."""

from __future__ import annotations

import typer

from kd_edge.cli import app
from kd_edge.cli.options import QuietOpt, RunDirArg, SetOpt


@app.command("export")
def export_command(run_dir: RunDirArg, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Export the run's distilled student to ONNX / TFLite (quantized as the recipe says) and verify
    every file against the PyTorch student.

    Examples:

      kd-edge export runs/minilm-l6-to-l2

      kd-edge export runs/minilm-l6-to-l2 --set 'export.tflite_shapes=[[1,64],[1,128]]'
    """
    from kd_edge.cli.run import execute

    raise typer.Exit(execute(None, None, set_, resume=True, force=False, quiet=quiet, stop_after="verify",
                             only=("export", "verify"), from_run=run_dir))
