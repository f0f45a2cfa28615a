"""Interleaved rounds: every model measured in several fresh processes, the models taking turns.

A shared machine's speed drifts: another job starts, a neighbour on the hypervisor wakes up. Measured
one after the other, the baseline and the exported files each see a different machine, and a ratio
between them says more about the drift than about the models. Here each model is measured in
``rounds`` fresh processes of ``ceil(runs / rounds)`` timed runs, the models taking turns (forward
order, then backward, then forward...), so every model sees the same drift. The rounds of a model are
merged into one document: latency statistics over all its timed runs, the p50 of each round, memory
and load times, and what else ran on the machine (``machine_load``, read by the runner itself).

``assess`` marks a model's figures unreliable when the machine was busy while it ran (other processes
on its cores, CPU time stolen by the hypervisor), when its rounds disagree, or when its tail is far
from its median; the report, the summary and the gate say so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kd_edge.errors import TargetError

BUSY_OTHER_CORES = 0.3  # other processes used this much CPU (in cores) while the model was timed
BUSY_STEAL_PCT = 5.0  # % of CPU time the hypervisor gave to other machines
ROUND_SPREAD = 1.25  # max / min of the rounds' p50
TAIL_RATIO = 3.0  # p99 / p50


@dataclass
class Job:
    """One model to measure: what the report calls it, the file or folder, the runner's arguments
    (everything but --runs), and its thread count."""

    name: str
    path: Path
    args: list[str]
    threads: int | None = None
    docs: list[dict] = field(default_factory=list)
    error: dict | None = None


def run_rounds(target, runner: Path, jobs: list[Job], *, rounds: int, runs: int, timeout_s: float,
               on_step: Callable[[Job, int], None] | None = None) -> list[dict]:
    """Measure every job in ``rounds`` interleaved rounds on ``target``; one merged document per job,
    in the order of ``jobs``. A job that fails is recorded with its error and left out of later rounds,
    so that one file a device cannot load does not hide the others' figures."""
    per_round = runs_per_round(runs, rounds)
    for r in range(rounds):
        order = jobs if r % 2 == 0 else list(reversed(jobs))
        for job in order:
            if job.error is not None:
                continue
            if on_step:
                on_step(job, r)
            try:
                doc = target.run(runner, job.path, [*job.args, "--runs", str(per_round)], threads=job.threads,
                                 timeout_s=timeout_s)
            except TargetError as e:
                job.error = {"error": str(e), "target": getattr(target, "name", "?"), "threads": job.threads}
                continue
            job.docs.append(doc)
    out = []
    for job in jobs:
        doc = merge(job.docs) if job.error is None else {**job.error, "runtime": _runtime(job.args)}
        doc["name"] = job.name
        out.append(doc)
    return out


def runs_per_round(runs: int, rounds: int) -> int:
    """Timed runs in each of a model's rounds: ``runs`` over all of them, rounded up."""
    return max(1, math.ceil(runs / rounds))


def _runtime(args: list[str]) -> str | None:
    return args[args.index("--runtime") + 1] if "--runtime" in args else None


def merge(docs: list[dict]) -> dict:
    """One result document from a model's rounds (each a fresh process)."""
    from kd_edge.device_runner import latency_stats

    first = docs[0]
    if len(docs) == 1 and "samples_ms" not in first:  # a native benchmark binary: no samples to pool
        return {**first, "rounds": [_round(first)], "reliability": assess({**first, "rounds": [_round(first)]})}
    samples = [s for d in docs for s in d.get("samples_ms") or []]
    batch = first.get("batch") or 1
    merged = dict(first)
    merged.update({
        "timed_runs": len(samples), "warmup_runs": sum(d.get("warmup_runs", 0) for d in docs),
        "latency": latency_stats(samples, batch) if samples else first.get("latency"),
        "samples_ms": samples,
        "rounds": [_round(d) for d in docs],
        "process_wall_s": round(sum(d.get("process_wall_s", 0.0) for d in docs), 3),
    })
    for key in ("import_ms", "load_ms", "first_inference_ms"):
        values = [d[key] for d in docs if d.get(key) is not None]
        if values:
            merged[key] = statistics.median(values)
    peaks = [d for d in docs if d.get("peak_rss_mb") is not None]
    if peaks:
        top = max(peaks, key=lambda d: d["peak_rss_mb"])
        merged["peak_rss_mb"], merged["memory"] = top["peak_rss_mb"], top.get("memory")
    loads = [d.get("machine_load") or {} for d in docs]
    merged["machine_load"] = {
        "other_cores_max": max((x["other_cores"] for x in loads if x.get("other_cores") is not None), default=None),
        "steal_pct_max": max((x["steal_pct"] for x in loads if x.get("steal_pct") is not None), default=None),
        "loadavg_before": loads[0].get("loadavg_before"), "loadavg_after": loads[-1].get("loadavg_after"),
    }
    lm = merge_lm([d["lm"] for d in docs if "lm" in d])
    if lm:
        merged["lm"] = lm
    merged["reliability"] = assess(merged)
    return merged


def merge_lm(rounds: list[dict]) -> dict:
    """A causal LM's pp/tg figures over its rounds: the median of each, and the rounds' values."""
    out: dict = {}
    for key in dict.fromkeys(k for r in rounds for k in r):
        values = [r[key] for r in rounds if key in r]
        if key == "ttft_ms":
            ms = [v for v in values if isinstance(v, (int, float))]
            out[key] = statistics.median(ms) if ms else values[0]
            continue
        figure: dict = {}
        for field_ in ("tokens_per_s", "llama_cpp_tokens_per_s"):
            got = [v[field_] for v in values if v.get(field_) is not None]
            if got:
                figure[field_] = statistics.median(got)
                if field_ == "tokens_per_s":
                    figure["rounds"] = got
        out[key] = figure or next((v for v in values if "na" in v), {})
    return out


def _round(doc: dict) -> dict:
    lat = doc.get("latency") or {}
    return {"p50_ms": lat.get("p50_ms"), "timed_runs": doc.get("timed_runs"), "machine_load": doc.get("machine_load")}


def assess(doc: dict) -> dict:
    """Whether a merged document's latency can be trusted, and if not, why (one phrase per reason)."""
    flags = []
    load = doc.get("machine_load") or {}
    other = load.get("other_cores_max", load.get("other_cores"))
    steal = load.get("steal_pct_max", load.get("steal_pct"))
    if other is not None and other > BUSY_OTHER_CORES:
        flags.append(f"other processes used {other:.1f} cores while it was timed")
    if steal is not None and steal > BUSY_STEAL_PCT:
        flags.append(f"the hypervisor took {steal:.0f} % of the CPU time")
    p50s = [r["p50_ms"] for r in doc.get("rounds") or [] if r.get("p50_ms")]
    if len(p50s) > 1 and max(p50s) / min(p50s) > ROUND_SPREAD:
        flags.append(f"its rounds' p50 differ {max(p50s) / min(p50s):.2f}×")
    lat = doc.get("latency") or {}
    if lat.get("p50_ms") and lat.get("p99_ms") and lat["p99_ms"] / lat["p50_ms"] > TAIL_RATIO:
        flags.append(f"p99 is {lat['p99_ms'] / lat['p50_ms']:.1f}× p50")
    return {"reliable": not flags, "flags": flags}


def host_load() -> dict:
    """This machine's load average and CPU steal counters now (for the stage's before/after record)."""
    from kd_edge.device_runner import LoadProbe

    snap = LoadProbe.snapshot() or {}
    return {"loadavg": snap.get("loadavg"), "steal_jiffies": snap.get("steal"), "total_jiffies": snap.get("total")}


def steal_between(before: dict, after: dict) -> float | None:
    """% of CPU time stolen between two ``host_load`` readings."""
    try:
        return round(100.0 * (after["steal_jiffies"] - before["steal_jiffies"])
                     / max(after["total_jiffies"] - before["total_jiffies"], 1), 2)
    except (KeyError, TypeError):
        return None
