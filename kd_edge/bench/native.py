"""The TFLite project's own `benchmark_model` binary, where a device has it and no Python: its
output parsed into the device runner's JSON (fields it does not report are null)."""

from __future__ import annotations

import re

from kd_edge.device_runner import SCHEMA

_SUMMARY = re.compile(r"Inference timings in us: Init: ([\d.e+]+), First inference: ([\d.e+]+), "
                      r"Warmup \(avg\): ([\d.e+]+), Inference \(avg\): ([\d.e+]+)")
_COUNT = re.compile(r"count=(\d+) first=([\d.e+]+) curr=[\d.e+]+ min=([\d.e+]+) max=([\d.e+]+) avg=([\d.e+]+) "
                    r"std=([\d.e+]+)(?: p5=[\d.e+]+ median=([\d.e+]+) p95=([\d.e+]+))?")
_MEMORY = re.compile(r"(?:Peak memory footprint|Memory footprint delta from the start of the tool) \(MB\): "
                     r"init=([\d.e+]+) overall=([\d.e+]+)|Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.e+]+)")


def parse_benchmark_model(text: str, *, batch: int = 1) -> dict:
    """The runner-style JSON of one `benchmark_model` run (times in ms; the timed runs are the last
    `count=` line). ``error`` when the output holds no timings."""
    summary = _SUMMARY.search(text)
    counts = _COUNT.findall(text)
    if not summary or not counts:
        last = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return {"schema": SCHEMA, "error": f"benchmark_model reported no timings: {last[0]}", "phase": "run"}
    init_us, first_us, _, _ = (float(v) for v in summary.groups())
    n, _, lo, hi, avg, std, median, p95 = counts[-1]
    ms = lambda v: float(v) / 1000 if v else None  # noqa: E731
    memory = _MEMORY.findall(text)
    peak = None
    if memory:
        init_mb, overall_mb, monitored = memory[-1]
        peak = float(monitored or overall_mb)
    mean = ms(avg)
    return {
        "schema": SCHEMA, "runtime": "tflite", "runtime_version": "benchmark_model (native)", "native": True,
        "batch": batch, "load_ms": init_us / 1000, "first_inference_ms": first_us / 1000, "timed_runs": int(n),
        "latency": {"p50_ms": ms(median), "p90_ms": None, "p99_ms": None, "p95_ms": ms(p95), "mean_ms": mean,
                    "std_ms": ms(std), "min_ms": ms(lo), "max_ms": ms(hi), "p50_ci95_ms": None,
                    "throughput_per_s": batch * 1000.0 / mean if mean else None},
        "memory": {"overall_mb": peak}, "peak_rss_mb": peak,
        "note": "benchmark_model reports mean, std, min, max (and median/p95 in newer builds), not p90/p99",
    }
