"""Every format x precision of finished runs' students: size, parity, task metric, latency — one table.

    python benchmarks/export_matrix.py runs/minilm-l6-to-l2 runs/minilm-sentiment-to-l2 runs/smollm2-135m-to-l6 [--write]

Each run is copied to ``<run>--matrix`` and resumed with every artifact its task can have, so export,
verify, bench and report run again there on the same student (the original run is left as it is).
Latency is the bench stage's p50 at batch 1 x ``--seq`` tokens, each file in a fresh process, all on
this machine in this one invocation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402
ENCODER = [("onnx", p) for p in ("fp32", "fp16", "int8", "int8-static", "int4")] + \
          [("tflite", p) for p in ("fp32", "fp16", "int8", "int8-weights")]
DECODER = [("onnx", p) for p in ("fp32", "fp16", "int8", "int4")] + \
          [("tflite", p) for p in ("fp32", "fp16", "int8", "int8-weights")]


def matrix(run: Path, seq: int, runs: int, fresh: bool) -> tuple[dict, float]:
    copy = run.with_name(f"{run.name}--matrix")
    if fresh and copy.exists():
        shutil.rmtree(copy)
    if not copy.exists():
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock", "checkpoints"))
    task = json.loads((run / "report.json").read_text())["task"]
    specs = DECODER if task == "causal_lm" else ENCODER
    artifacts = "[" + ", ".join(f"{{format: {f}, precision: {p}}}" for f, p in specs) + "]"
    cmd = [sys.executable, "-m", "kd_edge", "run", str(copy / "recipe.resolved.yaml"), "--out", str(copy), "--resume",
           "-q", "--set", f"export.artifacts={artifacts}", "--set", f"bench.seq_len={seq}",
           "--set", f"bench.runs={runs}", "--set", "gate.budgets=[]"]
    if task != "causal_lm":
        cmd += ["--set", f"export.tflite_shapes=[[1, {seq}]]"]
    else:  # prefill signatures for the recipe's texts (64 tokens) and for the benchmark shape
        cmd += ["--set", f"export.tflite_shapes=[[1, 64], [1, {seq}]]", "--set", f"export.kv_cache_size={2 * seq}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        sys.exit(f"{run}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads((copy / "report.json").read_text()), time.perf_counter() - t0


def table(report: dict, run_dir: Path) -> str:
    metric = report["quality_metric"]
    rows = report["rows"]
    student = next(r for r in rows if r["name"] == "student")
    params = student["params"]
    own = json.loads((run_dir / "verify" / "student.json").read_text()).get("pytorch_fp32_max_abs_diff")
    lines = [f"| model | format | precision | size MB | bytes / param | max \\|Δ\\| | vs PyTorch fp32 | {metric} "
             "| Δ vs student | p50 ms | speed-up vs teacher | verdict |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["kind"] == "artifact" and r.get(metric) is not None and student.get(metric) is not None:
            delta = r[metric] - student[metric]
            delta_s = f"{delta / student[metric] * 100:+.1f} %" if metric == "perplexity" else f"{delta * 100:+.2f} pt"
        else:
            delta_s = ""
        value = r.get(metric)
        value_s = "" if value is None else (f"{value:.1f}" if metric == "perplexity" else f"{value * 100:.2f} %")
        diff = f"{r['max_abs_diff']:.1e}" if r.get("max_abs_diff") is not None else "—"
        if r["name"] == "student" and own is not None:
            diff = f"{own:.1e}"  # PyTorch's own fp32 rounding
        vs32 = f"{r['max_abs_diff_vs_pytorch_fp32']:.1e}" if r.get("max_abs_diff_vs_pytorch_fp32") is not None else "—"
        p50 = f"{r['latency_p50_ms']:.2f}" if r.get("latency_p50_ms") else "—"
        speed = f"{r['speedup_p50']:.2f}×" if r.get("speedup_p50") else "—"
        verdict = "" if r.get("parity_passed") is None else ("pass" if r["parity_passed"] else "FAIL")
        extra = []
        if r.get("fallback") and r["fallback"].get("engaged"):
            extra.append(f"fallback level {r['fallback']['level']}")
        if r.get("greedy_same_as_pytorch") is not None:
            extra.append(f"greedy {r['greedy_same_as_pytorch']}/{r['greedy_prompts']} prompts same as PyTorch, "
                         f"{r['generation_tokens_per_s']:.0f} vs {r['pytorch_generation_tokens_per_s']:.0f} tok/s")
        if extra:
            verdict += " (" + "; ".join(extra) + ")"
        size = r.get("file_size_mb") or 0
        lines.append(f"| {r['name']} | {r['format']} | {r['precision']} | {size:.1f} | "
                     f"{size * 1e6 / (r.get('params') or params):.2f} | {diff} | {vs32} | {value_s} | {delta_s} | {p50} | {speed} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--bench-runs", type=int, default=100)
    p.add_argument("--write", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    p.add_argument("--tables-only", action="store_true", help="print the tables of the <run>--matrix copies as they are")
    p.add_argument("--fresh", action="store_true", help="copy each run again, replacing an older <run>--matrix")
    args = p.parse_args()
    parts = []
    for run in args.runs:
        if args.tables_only:
            report = json.loads((run.with_name(f"{run.name}--matrix") / "report.json").read_text())
            text = f"**{report['name']}** ({report['task']})\n\n" + table(report, run.with_name(f"{run.name}--matrix"))
        else:
            report, seconds = matrix(run, args.seq, args.bench_runs, args.fresh)
            text = (f"**{report['name']}** ({report['task']}; the copy's run took {seconds:.0f} s)\n\n"
                    + table(report, run.with_name(f"{run.name}--matrix")))
        print(text + "\n", flush=True)
        parts.append(text)
    if args.write:
        results.append(f"\n### {time.strftime('%Y-%m-%d')} — `benchmarks/export_matrix.py` (format × precision)\n\n"
                       f"Machine: {results.machine()}; one "
                    f"invocation, batch 1 × {args.seq} tokens, {args.bench_runs} timed runs per file in a fresh "
                    "process. \"bytes / param\" is the file size over the student's parameter count.\n\n"
                    + "\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
