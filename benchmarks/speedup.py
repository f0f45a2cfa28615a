"""Speed of the default run's student files against the teacher, measured in one session.

    python benchmarks/speedup.py [RUN_DIR] [--repeats 5] [--runs 200] [--threads 2] [--write]

Benchmarks the teacher (PyTorch fp32) and every model of a finished run with the same device runner
the pipeline uses, each in a fresh process, interleaved over ``--repeats`` rounds so that drift in a
shared machine's speed hits every model alike. Reports each model's median p50 over the rounds and
its speed-up over the teacher per round (median and range). ``--write`` appends the table, with the
machine it ran on, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402
sys.path.insert(0, str(ROOT))

from kd_edge.bench import RUNNER_PATH  # noqa: E402
from kd_edge.bench.run import models_to_bench, runner_args  # noqa: E402
from kd_edge.bench.targets.local import LocalTarget  # noqa: E402
from kd_edge.config import recipe_from_dict  # noqa: E402
from kd_edge.runfiles import load_cache  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", default=str(ROOT / "runs" / "minilm-l6-to-l2"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = p.parse_args()
    run_dir = Path(args.run_dir)
    data = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    data["bench"].update({"runs": args.runs, "threads": args.threads, "teacher": True, "student_torch": True})
    recipe = recipe_from_dict(data, "recipe.resolved.yaml")
    vocab = load_cache(run_dir)[0]["vocab_size"]
    models = models_to_bench(recipe, run_dir)
    target = LocalTarget()
    p50: dict[str, list[float]] = {m["name"]: [] for m in models}
    env = None
    for r in range(args.repeats):
        for m in models:
            doc = target.run(RUNNER_PATH, m["path"], [*runner_args(recipe, m, vocab), "--runs", str(args.runs)],
                             threads=args.threads, timeout_s=900)
            p50[m["name"]].append(doc["latency"]["p50_ms"])
            env = doc["environment"]
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in p50.items()), flush=True)
    base = p50["teacher"]
    lines = [f"| model | median p50 ms | p50 range ms | speed-up vs teacher (median of rounds) | speed-up range |",
             "|---|---:|---:|---:|---:|"]
    for name, values in p50.items():
        ratios = [b / v for b, v in zip(base, values)]
        lines.append(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}–{max(values):.2f} | "
                     f"{statistics.median(ratios):.2f}× | {min(ratios):.2f}–{max(ratios):.2f}× |")
    header = (f"### {dt.date.today()} — `benchmarks/speedup.py` on {run_dir.name}\n\n"
              f"Machine: {env['cpu_model']}, {env['cpu_count']} cores, {env['machine']}, AVX-512 VNNI "
              f"{env['avx512_vnni']}, Python {env['python']}. Batch {recipe.bench.batch_size} × {recipe.bench.seq_len} tokens, "
              f"{args.threads} threads, {args.runs} timed runs per model per round, {args.repeats} rounds, "
              f"models interleaved, each in a fresh process.\n")
    text = header + "\n" + "\n".join(lines) + "\n"
    print("\n" + text)
    if args.write:
        results.append(text)


if __name__ == "__main__":
    main()
