"""`kd-edge bench`: measure a run's models, or any files, on a target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.cli import app
from kd_edge.cli.options import QuietOpt, SetOpt


@app.command("bench")
def bench_command(
    paths: Annotated[list[Path], typer.Argument(help="A run folder, or .onnx / .tflite files and model folders.",
                                                show_default=False)],
    target: Annotated[Optional[str], typer.Option(
        "--target", "-t", help="local, a profile (rpi4, rpi5, rpi5-emulated, android-arm64, ci), PROFILE.yaml, "
        "user@host[:port] or adb[:serial].", show_default=False)] = None,
    host: Annotated[Optional[str], typer.Option(help="user@host[:port] for an SSH profile.", show_default=False)] = None,
    serial: Annotated[Optional[str], typer.Option(help="adb serial for an Android profile.", show_default=False)] = None,
    threads: Annotated[Optional[str], typer.Option(help="Thread counts, comma separated: 1,2,4.", show_default=False)] = None,
    batch: Annotated[int, typer.Option(help="Batch size (files only).")] = 1,
    seq: Annotated[int, typer.Option(help="Tokens per input (files only).")] = 128,
    runs: Annotated[int, typer.Option(help="Timed runs per file (files only).")] = 100,
    warmup: Annotated[int, typer.Option(help="Minimum warm-up runs (files only).")] = 10,
    vocab_size: Annotated[int, typer.Option(help="Token ids are drawn below this (files only).")] = 30000,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write one JSON per result into this folder.",
                                                show_default=False)] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Benchmark a run's teacher, student and exported files, or any files, where they will run.

    Each model runs in a fresh process with the standalone device runner: load time, first
    inference, warm-up until the latency settles, timed runs (p50/p90/p99 with a bootstrap interval),
    throughput and peak memory per phase. Remote targets get the runner and the file copied over
    (once per checksum) and must have Python, numpy and the runtime.

    Examples:

      kd-edge bench runs/minilm-l6-to-l2

      kd-edge bench runs/minilm-l6-to-l2/artifacts/*.onnx --threads 1,2

      kd-edge bench student.int8.tflite --target rpi5 --host pi@raspberrypi.local --runs 200
    """
    from kd_edge.errors import ConfigError

    if len(paths) == 1 and (paths[0] / "manifest.json").is_file():
        overrides = list(set_ or [])
        for key, value in (("target", target), ("host", host), ("serial", serial)):
            if value:
                overrides.append(f"bench.{key}={value}")
        if threads:
            overrides.append(f"bench.threads={threads.split(',')[0]}")
        from kd_edge.cli.run import execute

        raise typer.Exit(execute(None, None, overrides, resume=True, force=False, quiet=quiet, stop_after="bench",
                                 only=("bench",), from_run=paths[0]))
    if set_:
        raise ConfigError("--set applies to a run folder; for files use --threads, --batch, --seq, --runs")
    from kd_edge.artifacts import write_json
    from kd_edge.bench.files import bench_files, results_table
    from kd_edge.bench.profiles import make_target, resolve_target

    try:
        thread_list = [int(t) for t in threads.split(",")] if threads else [None]
    except ValueError:
        raise ConfigError(f"--threads '{threads}' must be numbers separated by commas, e.g. 1,2,4") from None
    profile = resolve_target(target or "local", host=host, serial=serial)
    device = make_target(profile)
    if thread_list == [None] and profile.threads:
        thread_list = [profile.threads]
    typer.echo(f"kd-edge bench: {len(paths)} file(s) on {device.name} ({profile.description or profile.kind})")
    try:
        results = bench_files(paths, device, threads_list=thread_list, batch=batch, seq=seq, runs=runs, warmup=warmup,
                              vocab_size=vocab_size, timeout_s=900,
                              on_result=None if quiet else (lambda d: typer.echo(f"  {d['name']}: "
                                                                                 f"{'error' if 'error' in d else 'done'}")))
    finally:
        device.close()
    typer.echo(results_table(results))
    if out is not None:
        for d in results:
            suffix = f"-t{d['threads']}" if d.get("threads") else ""
            safe_target = "".join(c if c.isalnum() or c in "-_." else "_" for c in d["target"])
            write_json(out / f"{d['name']}@{safe_target}{suffix}.json", d)
        typer.echo(f"results: {out}")
    raise typer.Exit(1 if any("error" in d for d in results) else 0)
