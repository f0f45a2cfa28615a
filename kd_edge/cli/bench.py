"""`kd-edge bench`: measure a run's models on a target."""

from __future__ import annotations

import typer

from kd_edge.cli import app
from kd_edge.cli.options import QuietOpt, RunDirArg, SetOpt


@app.command("bench")
def bench_command(run_dir: RunDirArg, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Benchmark the teacher, the student and every exported file of a run: latency p50/p90/p99,
    throughput, peak memory and load time, each model in a fresh process.

    Examples:

      kd-edge bench runs/minilm-l6-to-l2

      kd-edge bench runs/minilm-l6-to-l2 --set bench.threads=1 --set bench.runs=300
    """
    from kd_edge.cli.run import execute

    raise typer.Exit(execute(None, None, set_, resume=True, force=False, quiet=quiet, stop_after="bench",
                             only=("bench",), from_run=run_dir))
