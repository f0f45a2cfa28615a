"""Overhead of the device runner against a bare ONNX Runtime loop, on the same file, same session.

    python benchmarks/runner_overhead.py MODEL.onnx [--rounds 5] [--runs 300] [--threads 2] [--write]

Each round runs, each in a fresh process: (a) the kd-edge device runner through the local target,
(b) a bare `InferenceSession.run` loop with the same session options, input, warm-up and run count.
Reports both medians of p50 over the rounds and the runner's relative overhead per round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402
sys.path.insert(0, str(ROOT))

from kd_edge.bench import RUNNER_PATH  # noqa: E402
from kd_edge.bench.targets.local import LocalTarget  # noqa: E402

BARE = textwrap.dedent("""
    import json, sys, time
    import numpy as np, onnxruntime as ort
    path, threads, runs, warmup, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 2000, size=(1, seq), dtype=np.int64),
             "attention_mask": np.ones((1, seq), dtype=np.int64)}
    for _ in range(warmup): sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns(); sess.run(None, feeds); times.append((time.perf_counter_ns() - t0) / 1e6)
    print(json.dumps({"p50_ms": float(np.median(times))}))
""")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    model = Path(args.model)
    env = {"OMP_NUM_THREADS": str(args.threads)}
    target = LocalTarget()
    runner, bare, over = [], [], []
    for r in range(args.rounds):
        doc = target.run(RUNNER_PATH, model, ["--runtime", "onnxruntime", "--threads", str(args.threads), "--runs",
                                              str(args.runs), "--warmup", "50", "--seq", str(args.seq)],
                         threads=args.threads, timeout_s=900)
        out = subprocess.run([sys.executable, "-c", BARE, str(model), str(args.threads), str(args.runs),
                              str(doc["warmup_runs"]), str(args.seq)], capture_output=True, text=True,
                             env={**__import__("os").environ, **env}, check=True).stdout
        a, b = doc["latency"]["p50_ms"], json.loads(out.strip().splitlines()[-1])["p50_ms"]
        runner.append(a)
        bare.append(b)
        over.append(a / b - 1)
        print(f"round {r + 1}: runner {a:.3f} ms, bare loop {b:.3f} ms, overhead {over[-1] * 100:+.2f} %", flush=True)
    env_doc = doc["environment"]
    text = (f"\n### {dt.date.today()} — `benchmarks/runner_overhead.py {model.name}`\n\n"
            f"Machine: {env_doc['cpu_model']}, {env_doc['cpu_count']} cores. 1 × {args.seq} tokens, {args.threads} threads, "
            f"{args.runs} timed runs per process, {args.rounds} rounds, runner and bare loop alternating, each in a "
            f"fresh process with the same warm-up count.\n\n"
            f"| | median p50 ms | p50 range ms |\n|---|---:|---:|\n"
            f"| kd-edge device runner | {statistics.median(runner):.3f} | {min(runner):.3f}–{max(runner):.3f} |\n"
            f"| bare `InferenceSession.run` loop | {statistics.median(bare):.3f} | {min(bare):.3f}–{max(bare):.3f} |\n\n"
            f"Runner overhead per round: median {statistics.median(over) * 100:+.2f} % "
            f"(range {min(over) * 100:+.2f} % to {max(over) * 100:+.2f} %).\n")
    print(text)
    if args.write:
        results.append(text)


if __name__ == "__main__":
    main()
