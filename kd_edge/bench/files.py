"""Benchmark files and model folders that are not part of a run: `kd-edge bench FILE... --target T`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kd_edge.bench import RUNNER_PATH
from kd_edge.errors import ArtifactError
from kd_edge.tasks.hub import read_config
from kd_edge.tasks.kinds import kind_of_config



def runtime_of(path: Path) -> str:
    """The runtime that runs a file: its format's (kd_edge/formats/, by suffix); a folder is a Hugging
    Face model for PyTorch."""
    from kd_edge.formats import FORMATS, find_format, format_of

    suffixes = " / ".join(f.suffix for f in FORMATS.values())
    if not path.exists():
        raise ArtifactError(f"'{path}' does not exist; pass {suffixes} files or a model folder")
    fmt = find_format(path)
    if path.is_dir() and not (fmt and fmt.is_folder):
        if not (path / "config.json").is_file():
            raise ArtifactError(f"'{path}' is not a kd-edge run folder (no manifest.json) nor a model folder (no "
                                f"config.json); pass a run folder, a model folder, or {suffixes} files")
        return "torch"
    fmt = fmt or format_of(path)  # no format of that suffix: the one-line error naming those there are
    fmt.check_file(path)
    return fmt.runtime


def is_causal_lm(path: Path) -> bool:
    """Whether a file or folder holds a causal LM: its config, its sidecar, or a format only LMs take."""
    import json

    from kd_edge.formats import find_format

    fmt = find_format(path)
    if path.is_dir() and not (fmt and fmt.is_folder):
        return kind_of_config(read_config(path)).is_lm
    sidecar = path.parent / f"{path.name}.json"
    try:
        task = json.loads(sidecar.read_text()).get("task") if sidecar.is_file() else None
    except (ValueError, AttributeError):  # an unreadable sidecar says nothing: the format decides
        task = None
    return task == "causal_lm" if task else fmt is not None and not fmt.takes(False)


def bench_files(paths: list[Path], target, *, threads_list: list[int | None], batch: int, seq: int, runs: int,
                warmup: int, vocab_size: int, timeout_s: float, rounds: int = 1,
                on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Every file x thread count on the target, in ``rounds`` interleaved rounds of fresh processes
    (bench/rounds.py); failures are recorded, not raised, so that one file a device cannot load does
    not hide the others."""
    from kd_edge.bench.rounds import Job, run_rounds

    from kd_edge.bench.config import BenchConfig

    jobs = []
    for path in paths:
        runtime = runtime_of(path)
        # a causal LM: prompt processing and token generation too, as LLM users read them
        lm = BenchConfig().lm_runner_args() if is_causal_lm(path) else []
        for threads in threads_list:
            args = ["--runtime", runtime, "--batch", str(batch), "--seq", str(seq), "--warmup", str(warmup),
                    "--vocab-size", str(vocab_size)]
            if threads:
                args += ["--threads", str(threads)]
            if runtime == "torch":  # the folder's head, from its config.json (an encoder is pooled)
                kind = kind_of_config(read_config(path))
                args += ["--head", kind.runner_head, "--auto-class", kind.auto_class]
            jobs.append(Job(path.name, path, args + lm, threads))
    results = run_rounds(target, RUNNER_PATH, jobs, rounds=rounds, runs=runs, timeout_s=timeout_s,
                         on_step=(lambda job, r: on_result({"name": job.name, "round": r})) if on_result else None)
    for doc, job in zip(results, jobs):
        doc.setdefault("threads", job.threads)
    return results


def results_table(results: list[dict]) -> str:
    """One line per result: file, target, threads, p50/p90/p99, throughput, peak memory."""
    lines = [f"{'file':<28} {'target':<16} {'thr':>3} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'items/s':>9} {'peak MB':>8}"]
    notes = []
    for d in results:
        if "error" in d:
            lines.append(f"{d['name']:<28} {d.get('target', ''):<16} {str(d.get('threads') or '-'):>3}  error: {d['error']}")
            continue
        lat = d["latency"]
        emulated = " (emulated)" if d.get("environment", {}).get("emulated") else ""
        flags = (d.get("reliability") or {}).get("flags") or []
        mark = " *" if flags else ""
        if flags:
            notes.append(f"* {d['name']}: unreliable: {'; '.join(flags)}")
        lines.append(f"{d['name']:<28} {d['target']:<16} {str(d.get('threads') or '-'):>3} {lat['p50_ms']:>9.2f} "
                     f"{lat['p90_ms']:>9.2f} {lat['p99_ms']:>9.2f} {lat['throughput_per_s']:>9.1f} "
                     f"{d.get('peak_rss_mb') or 0:>8.0f}{emulated}{mark}")
    for d in results:
        figures = [f"{k.replace('@', ' @ ')} {v['tokens_per_s']:.1f}" if "tokens_per_s" in v else f"{k} n/a ({v.get('na')})"
                   for k, v in (d.get("lm") or {}).items() if isinstance(v, dict)]
        if figures:
            ttft = (d.get("lm") or {}).get("ttft_ms")
            lines.append(f"  {d['name']} tokens/s: " + ", ".join(figures)
                         + (f"; TTFT {ttft:.1f} ms" if isinstance(ttft, (int, float)) else ""))
    return "\n".join(lines + notes)
