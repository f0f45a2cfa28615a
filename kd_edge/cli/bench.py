"""`kd-edge bench`: measure a run's models, or any files, on a target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.bench import profile_names
from kd_edge.cli import app
from kd_edge.cli.options import QuietOpt, SetOpt


def _thread_counts(text: str | None) -> list[int | None]:
    from kd_edge.errors import ConfigError

    if not text:
        return [None]
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--threads '{text}' is not a list of whole numbers; write e.g. --threads 1,2,4") from None
    bad = [t for t in counts if t < 1]
    if bad or not counts:
        raise ConfigError(f"--threads '{text}' holds a count below 1; thread counts are 1 or more, e.g. --threads 1,2,4")
    return counts


@app.command("bench")
def bench_command(
    paths: Annotated[list[Path], typer.Argument(help="A run folder, or .onnx / .tflite files and model folders.",
                                                show_default=False)],
    target: Annotated[Optional[str], typer.Option(
        "--target", "-t", help=f"A profile ({', '.join(profile_names())}), PROFILE.yaml, user@host[:port] or "
        "adb[:serial].", show_default=False)] = None,
    host: Annotated[Optional[str], typer.Option(help="user@host[:port] for an SSH profile.", show_default=False)] = None,
    key: Annotated[Optional[Path], typer.Option(
        "--key", help="SSH: the private key to log in with (default: the SSH agent and ~/.ssh keys).",
        show_default=False)] = None,
    known_hosts: Annotated[Optional[Path], typer.Option(
        "--known-hosts", help="SSH: a known_hosts file with the device's host key (besides ~/.ssh/known_hosts).",
        show_default=False)] = None,
    serial: Annotated[Optional[str], typer.Option(help="adb serial for an Android profile.", show_default=False)] = None,
    python: Annotated[Optional[str], typer.Option(
        "--python", help="The device's Python interpreter, e.g. /home/pi/venv/bin/python (default: the profile's, "
        "python3).", show_default=False)] = None,
    threads: Annotated[Optional[str], typer.Option(help="Thread counts, comma separated: 1,2,4.", show_default=False)] = None,
    batch: Annotated[int, typer.Option(help="Batch size (files only).")] = 1,
    seq: Annotated[int, typer.Option(help="Tokens per input (files only).")] = 128,
    runs: Annotated[int, typer.Option(help="Timed runs per file, over all rounds (files only).")] = 100,
    rounds: Annotated[int, typer.Option(help="Fresh processes per file, the files taking turns (files only).")] = 3,
    warmup: Annotated[int, typer.Option(help="Minimum warm-up runs (files only).")] = 10,
    vocab_size: Annotated[int, typer.Option(help="Token ids are drawn below this (files only).")] = 30000,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write one JSON per result into this folder.",
                                                show_default=False)] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Benchmark a run's teacher, student and exported files, or any files, where they will run.

    Each model runs in fresh processes with the standalone device runner, in rounds that take turns
    (so that every model sees the same drift of a shared machine): load time, first inference,
    warm-up until the latency settles, timed runs (p50/p90/p99 with a bootstrap interval),
    throughput and peak memory per phase, and what else loaded the machine meanwhile (figures taken
    on a busy machine are marked unreliable). Remote targets get the runner and the file copied over
    (once per checksum) and must have Python, numpy and the runtime.

    SSH: the device's host key must be known (~/.ssh/known_hosts or --known-hosts); log in with the
    SSH agent, ~/.ssh keys or --key. A profile YAML can name them too (key_file:, known_hosts:).

    Examples:

      kd-edge bench runs/minilm-l6-to-l2

      kd-edge bench runs/minilm-l6-to-l2/artifacts/*.onnx --threads 1,2

      kd-edge bench student.int8.tflite --target rpi5 --host pi@raspberrypi.local --runs 200

      kd-edge bench student.int8.onnx --target pi@10.0.0.7:2222 --key ~/.ssh/pi_ed25519 --known-hosts pi_hosts \\
        --python /home/pi/venv/bin/python
    """
    from kd_edge.errors import ConfigError, TargetError

    from kd_edge.paths import positive

    thread_list = _thread_counts(threads)
    for value, option in ((batch, "--batch"), (seq, "--seq"), (runs, "--runs"), (rounds, "--rounds"),
                          (vocab_size, "--vocab-size")):
        positive(value, option)
    if warmup < 0:
        raise ConfigError(f"--warmup {warmup} is negative; pass 0 or more")
    if out is not None:
        from kd_edge.paths import output_dir

        output_dir(out, "--out")
    ssh = {"key_file": str(key) if key else None, "known_hosts": str(known_hosts) if known_hosts else None,
           "python": python}
    from kd_edge.runfiles import RunFiles

    if len(paths) == 1 and RunFiles(paths[0]).manifest.is_file():
        overrides = list(set_ or [])
        for name, value in (("target", target), ("host", host), ("serial", serial), *ssh.items()):
            if value:
                overrides.append(f"bench.{name}={value}")
        if thread_list != [None]:
            if len(thread_list) > 1:
                raise ConfigError("a run folder is benchmarked at one thread count (bench.threads); pass one, "
                                  "e.g. --threads 2, or benchmark its files: kd-edge bench RUN/artifacts/*")
            overrides.append(f"bench.threads={thread_list[0]}")
        from kd_edge.cli.run import execute

        raise typer.Exit(execute(None, None, overrides, resume=True, force=False, quiet=quiet, stop_after="bench",
                                 only=("bench",), from_run=paths[0]))
    if set_:
        raise ConfigError("--set applies to a run folder; for files use --threads, --batch, --seq, --runs")
    from kd_edge.artifacts import write_json
    from kd_edge.bench.files import bench_files, results_table, runtime_of
    from kd_edge.bench.profiles import make_target, resolve_target

    for path in paths:
        runtime_of(path)  # every path is checked before anything runs
    profile = resolve_target(target or "local", host=host, serial=serial, **ssh)
    device = make_target(profile)
    if thread_list == [None] and profile.threads:
        thread_list = [profile.threads]
    typer.echo(f"kd-edge bench: {len(paths)} file(s) on {device.name} ({profile.description or profile.label}), "
               f"{rounds} round(s)")
    try:
        results = bench_files(paths, device, threads_list=thread_list, batch=batch, seq=seq, runs=runs, warmup=warmup,
                              vocab_size=vocab_size, timeout_s=900, rounds=rounds,
                              on_result=None if quiet else (lambda d: typer.echo(f"  {d['name']}: round {d['round'] + 1}")))
    finally:
        device.close()
    typer.echo(results_table(results))
    if out is not None:
        from kd_edge.runfiles import BenchFiles

        for d in results:
            suffix = f"-t{d['threads']}" if d.get("threads") else ""
            write_json(BenchFiles(out).record(d["name"], d.get("target", device.name), suffix), d)
        typer.echo(f"results: {out}")
    failed = [d for d in results if "error" in d]
    if failed:
        more = f" (and {len(failed) - 1} more, in the table)" if len(failed) > 1 else ""
        raise TargetError(f"{failed[0]['error']}{more}")
