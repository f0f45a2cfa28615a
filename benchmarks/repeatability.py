"""Repeatability of a local benchmark: the same file, the same settings, five fresh runs.

    python benchmarks/repeatability.py MODEL [--repeats 5] [--runs 200] [--threads 2] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402
sys.path.insert(0, str(ROOT))

from kd_edge.bench.files import bench_files  # noqa: E402
from kd_edge.bench.targets.local import LocalTarget  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    model = Path(args.model)
    docs = []
    for r in range(args.repeats):
        docs += bench_files([model], LocalTarget(), threads_list=[args.threads], batch=1, seq=128, runs=args.runs,
                            warmup=10, vocab_size=30000, timeout_s=900)
        print(f"run {r + 1}: p50 {docs[-1]['latency']['p50_ms']:.3f} ms", flush=True)
    p50 = [d["latency"]["p50_ms"] for d in docs]
    env = docs[-1]["environment"]
    text = (f"\n### {dt.date.today()} — `benchmarks/repeatability.py {model.name}`\n\n"
            f"Machine: {env['cpu_model']}, {env['cpu_count']} cores. 1 × 128 tokens, {args.threads} threads, "
            f"{args.runs} timed runs, {args.repeats} fresh runs one after another.\n\n"
            f"p50 per run (ms): {', '.join(f'{v:.3f}' for v in p50)}; **max/min = {max(p50) / min(p50):.3f}**.\n")
    print(text)
    if args.write:
        results.append(text)


if __name__ == "__main__":
    main()
