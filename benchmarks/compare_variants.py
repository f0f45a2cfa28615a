"""Compare distillation settings on one recipe: each variant reuses a finished run's data, teacher
and cache, retrains the student with its overrides, and evaluates it; one table comes out.

    python benchmarks/compare_variants.py RUN_DIR \\
        --variant "logit only" "distill.losses=[{name: kl, temperature: 2.0}, {name: ce, weight: 0.5}]" \\
        --variant "logit + intermediate" "" [--write "title"]

A variant with no overrides is the run itself. Each variant runs in runs/<run>--<variant slug>/
through `kd-edge distill --resume`, so it shares everything up to the student with the base run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True,
                   help="a name and ';'-separated key=value overrides ('' for the run as it is)")
    p.add_argument("--write", metavar="TITLE", help="append the table to benchmarks/RESULTS.md under this title")
    args = p.parse_args()
    base = Path(args.run_dir)
    rows = []
    for name, overrides in args.variant:
        out = base if not overrides else base.with_name(f"{base.name}--{slug(name)}")
        if overrides and not out.exists():
            shutil.copytree(base, out, ignore=shutil.ignore_patterns(".lock"))
        cmd = [sys.executable, "-m", "kd_edge", "distill", str(out / "recipe.resolved.yaml"), "--out", str(out),
               "--resume", "-q"]
        for o in filter(None, (s.strip() for s in overrides.split(";"))):
            cmd += ["--set", o]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"variant {name!r} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
        summary = json.loads((out / "train" / "summary.json").read_text())
        rows.append((name, overrides or "(the recipe)", metrics, summary, time.perf_counter() - t0))
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    metric = rows[0][2]["quality_metric"]
    higher = rows[0][2]["higher_is_better"]
    teacher = rows[0][2]["models"]["teacher"]
    extra = [k for k in rows[0][2]["models"]["student"] if k not in ("params", metric)]
    lines = [f"| variant | overrides | steps | {metric} | vs teacher | " + " | ".join(extra) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(extra)]
    lines.append(f"| teacher | | | {teacher[metric]:.4f} | | " + " | ".join(
        f"{teacher.get(k, float('nan')):.4f}" for k in extra) + " |")
    for name, overrides, metrics, summary, _ in rows:
        s = metrics["models"]["student"]
        ratio = s[metric] / teacher[metric] if higher else teacher[metric] / s[metric]
        lines.append(f"| {name} | `{overrides}` | {summary['steps']} | {s[metric]:.4f} | {ratio * 100:.1f} % | "
                     + " | ".join(f"{s.get(k, float('nan')):.4f}" for k in extra) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.write:
        results.append(f"\n### {time.strftime('%Y-%m-%d')} — {args.write}\n\n`benchmarks/compare_variants.py {base}`; "
                    f"same data, split, teacher and steps for every variant. \"vs teacher\" is the student's share of "
                    f"the teacher's {metric}" + (" (teacher / student for perplexity)" if not higher else "") +
                    ".\n\n" + table + "\n")


if __name__ == "__main__":
    main()
