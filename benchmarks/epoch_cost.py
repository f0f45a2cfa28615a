"""What distillation costs per epoch against plain fine-tuning of the same student.

    python benchmarks/epoch_cost.py runs/minilm-sentiment-to-l2 [--steps 60] [--rounds 3] [--write]

Three training loops on one finished run's data, student and teacher cache, same batch size and
steps, interleaved over rounds:

- plain fine-tuning: the student on the labels alone (cross-entropy), no teacher at all;
- distillation from the cache: the recipe's losses, teacher outputs read from the teacher cache;
- naive distillation: the recipe's losses with the frozen teacher run on every batch (``distill.mode=live``).

Each loop is ``kd-edge distill --resume`` on a copy of the run (so everything up to the student is
shared), and its throughput is the training loop's own samples/s at the last step (model loading and
evaluation excluded). An epoch's cost is the training split's size over that throughput; the ratio
to plain fine-tuning is taken within each round, and the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402
LOOPS = {
    "plain fine-tuning (CE on labels, no teacher)": ["distill.losses=[{name: ce, weight: 1.0}]"],
    "distillation, teacher cache": [],
    "naive distillation, teacher run every step": ["distill.mode=live"],
}


def throughput(run: Path, overrides: list[str], steps: int) -> float:
    """Train ``steps`` steps in ``run`` (a copy) and return the loop's samples per second."""
    cmd = [sys.executable, "-m", "kd_edge", "distill", str(run / "recipe.resolved.yaml"), "--out", str(run),
           "--resume", "-q", "--set", f"distill.max_steps={steps}", "--set", "distill.checkpoint_every=100000"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training in {run} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((run / "train" / "summary.json").read_text())
    return float(summary["final"]["samples_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args()
    base = args.run_dir
    with open(base / "data" / "train.jsonl") as f:
        n_train = sum(1 for line in f if line.strip())
    copies = {}
    for i, name in enumerate(LOOPS):
        copies[name] = base.with_name(f"{base.name}--epoch-cost-{i}")
        if not copies[name].exists():
            shutil.copytree(base, copies[name], ignore=shutil.ignore_patterns(".lock", "checkpoints"))
    rates: dict[str, list[float]] = {n: [] for n in LOOPS}
    for r in range(args.rounds):
        for name, overrides in LOOPS.items():
            # A different step count each round changes the stage's key, so it trains again from the start.
            rates[name].append(throughput(copies[name], overrides, args.steps + r))
            print(f"round {r + 1}: {name}: {rates[name][-1]:.1f} samples/s", flush=True)
    plain = "plain fine-tuning (CE on labels, no teacher)"
    recipe = (base / "recipe.resolved.yaml").read_text()
    batch = next(ln.split(":")[1].strip() for ln in recipe.splitlines() if ln.strip().startswith("batch_size:"))
    lines = [f"| training loop | median samples/s | range | epoch s ({n_train} texts)"
             + " | × plain fine-tuning (median of rounds) | range |", "|---|---:|---:|---:|---:|---:|"]
    for name in LOOPS:
        ratios = [rates[plain][i] / rates[name][i] for i in range(args.rounds)]
        med = statistics.median(rates[name])
        epoch = f"{n_train / med:.0f}"
        lines.append(f"| {name} | {med:.1f} | {min(rates[name]):.1f}–{max(rates[name]):.1f} | {epoch} | "
                     f"{statistics.median(ratios):.2f}× | {min(ratios):.2f}–{max(ratios):.2f}× |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.write:
        results.append(f"\n### {time.strftime('%Y-%m-%d')} — `benchmarks/epoch_cost.py {base}`\n\n"
                       f"Machine: {results.machine()}. "
                    f"{args.steps}–{args.steps + args.rounds - 1} optimizer steps of batch {batch} per loop per "
                    f"round, {args.rounds} rounds, loops interleaved; throughput is the training loop's own "
                    "(model loading excluded).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
