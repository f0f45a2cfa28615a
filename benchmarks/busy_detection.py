"""Does the bench notice a busy machine? One exported file benchmarked in interleaved rounds, quiet and
with another process burning one core, alternating, in one invocation: the p50, what the runner saw
of the other processes (cores), and whether the figures were marked unreliable.

    python benchmarks/busy_detection.py runs/minilm-l6-to-l2/artifacts/student.int8.onnx [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import results  # noqa: E402
from kd_edge.bench.files import bench_files  # noqa: E402
from kd_edge.bench.targets.local import LocalTarget  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = p.parse_args()
    model = Path(args.model)
    seen: dict[str, list[dict]] = {"quiet": [], "one core burnt by another process": []}
    for _ in range(args.repeats):
        for condition in seen:
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if "burnt" in condition else None
            try:
                doc = bench_files([model], LocalTarget(), threads_list=[args.threads], batch=1, seq=128, runs=150,
                                  warmup=10, vocab_size=30000, timeout_s=900, rounds=3)[0]
            finally:
                if burner:
                    burner.kill()
            seen[condition].append(doc)
    lines = ["| machine | p50 ms (median of repeats) | other processes, cores (max) | marked unreliable |",
             "|---|---:|---:|---:|"]
    for condition, docs in seen.items():
        p50 = statistics.median(d["latency"]["p50_ms"] for d in docs)
        other = max(d["machine_load"]["other_cores_max"] for d in docs)
        marked = sum(not d["reliability"]["reliable"] for d in docs)
        lines.append(f"| {condition} | {p50:.2f} | {other:.2f} | {marked} of {len(docs)} |")
    text = (f"### {dt.date.today()} — `benchmarks/busy_detection.py {model.name}`\n\n"
            f"Machine: {results.machine()}. 1 × 128 tokens, {args.threads} thread(s), 150 timed runs in 3 interleaved "
            f"rounds per benchmark, quiet and burnt alternating, {args.repeats} repeats.\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.write:
        results.append(text)


if __name__ == "__main__":
    main()
