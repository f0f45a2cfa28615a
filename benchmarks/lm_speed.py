"""Causal-LM speed as LLM users read it: prompt processing (pp) and token generation (tg) in tokens/s,
time to first token and peak memory, for the PyTorch student and every LM file of a run, in one
invocation; for GGUF files, llama.cpp's own count of the same work beside kd-edge's.

    python benchmarks/lm_speed.py runs/smollm2-135m-to-l6 [--rounds 3] [--threads 2] [--write]

- ``pp N``: a prompt of N tokens evaluated from an empty cache, N / seconds.
- ``tg N @ d``: N tokens generated one at a time (greedy, each fed back) after a prompt of d tokens
  (d = 0: after one token), N / seconds of the N steps.
- ``ttft``: a 128-token prompt to its first generated token (the prompt's logits and an argmax).
- peak memory: VmHWM of the process that measured the file.

Every figure is the device runner's (``kd_edge/device_runner.py: measure_lm``, what the bench stage
measures on a recipe's target, locally or over SSH). Each file is measured in a fresh runner process
per round, the files taking turns (forward, then backward), so that every file sees the same drift of
a shared machine; figures are medians over rounds. A file that cannot hold a shape (a TFLite
decoder's fixed buffers, a prefill signature it lacks) says so instead of a figure. llama.cpp's own
figure is ``llama_perf_context``'s prompt-eval and eval time of the same calls (its timers, inside
libllama), read in the same process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kd_edge.bench.config import BenchConfig  # noqa: E402  (after the path above)

SHAPES = BenchConfig()  # the bench stage's pp / tg / TTFT shapes: pp 128, 512; tg 32, 128 after 0 and 512
PP, TG = SHAPES.lm_prompt, SHAPES.lm_generate


def runner_command(path: Path, info: dict | None, vocab: int, threads: int) -> list[str]:
    """The device runner's command line that measures one model's pp/tg figures (kd_edge/device_runner.py:
    measure_lm; the bench stage runs the same on the recipe's target)."""
    from kd_edge.bench import RUNNER_PATH

    runtime = info["runtime"] if info else "torch"
    cmd = [sys.executable, str(RUNNER_PATH), str(path), "--runtime", runtime, "--seq", "16", "--runs", "5",
           "--warmup", "2", "--threads", str(threads), "--vocab-size", str(vocab),
           *SHAPES.lm_runner_args()]
    if info is None:
        cmd += ["--head", "lm_logits", "--auto-class", "AutoModelForCausalLM"]
    return cmd


def models(run: Path) -> list[tuple[str, Path, dict | None]]:
    from kd_edge.runfiles import RunFiles

    files = RunFiles(run)
    rows: list[tuple[str, Path, dict | None]] = [("student (PyTorch)", files.student, None)]
    for sidecar in files.artifacts.sidecars():
        info = json.loads(sidecar.read_text())
        rows.append((info["name"], files.artifacts.file(info["name"]), info))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    rows = models(args.run)
    vocab = json.loads((args.run / "student" / "config.json").read_text())["vocab_size"]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in rows}
    for r in range(args.rounds):
        for name, path, info in rows if r % 2 == 0 else list(reversed(rows)):
            proc = subprocess.run(runner_command(path, info, vocab, args.threads), capture_output=True, text=True)
            doc = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
            if proc.returncode != 0 or "lm" not in doc:
                sys.exit(f"{name}: {doc.get('error') or proc.stderr[-2000:]}")
            results[name].append({**doc["lm"], "peak_rss_mb": doc["peak_rss_mb"]})
            print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
    (args.run / "lm_speed.json").write_text(json.dumps(results, indent=1))  # the raw figures, before rendering
    table = render(results, args)
    print(table)
    if args.write:
        import results as shared

        shared.append(table)


def _median(docs: list[dict], key: str, field: str = "tokens_per_s"):
    values = [d[key][field] for d in docs if key in d and d[key].get(field) is not None]
    if values:
        return statistics.median(values)
    na = next((d[key]["na"] for d in docs if key in d and "na" in d[key]), None)
    return na


def render(results: dict[str, list[dict]], args) -> str:
    import results as shared

    keys = [f"pp{n}" for n in PP] + [f"tg{n}@{d}" for n, d in TG]
    head = "| model | " + " | ".join(k.replace("@", " @ ") for k in keys) + f" | TTFT ms ({SHAPES.lm_ttft_prompt}) | peak MB |"
    lines = [f"### {time.strftime('%Y-%m-%d')} — LM speed: `benchmarks/lm_speed.py {args.run}`", "",
             f"{shared.machine()}; {args.threads} threads; medians of {args.rounds} interleaved rounds, each file in "
             "a fresh process per round. tokens/s; \"n/a\" says why a file cannot run that shape.", "",
             head, "|" + "---|" * (len(keys) + 3)]
    notes = []
    for name, docs in results.items():
        cells = []
        for k in keys:
            v = _median(docs, k)
            if isinstance(v, float):
                cells.append(f"{v:.1f}")
            else:
                cells.append("n/a")
                if v and (name, v) not in notes:
                    notes.append((name, v))
        ttft = [d["ttft_ms"] for d in docs if isinstance(d.get("ttft_ms"), (int, float))]
        peak = max(d["peak_rss_mb"] for d in docs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.median(ttft):.1f} |" if ttft else
                     f"| {name} | " + " | ".join(cells) + " | n/a |")
        lines[-1] += f" {peak:.0f} |"
    for name, why in notes:
        lines.append(f"\n- {name}: n/a — {why}")
    gguf = [(n, d) for n, d in results.items() if any("llama_cpp_tokens_per_s" in x.get(k, {}) for x in d for k in keys)]
    if gguf:
        lines += ["", "llama.cpp's own timers (`llama_perf_context`, inside libllama) on the same calls, beside "
                  "kd-edge's wall-clock figure:", "",
                  "| file | figure | kd-edge tokens/s | llama.cpp tokens/s | kd-edge / llama.cpp |", "|---|---|---:|---:|---:|"]
        for name, docs in gguf:
            for k in keys:
                a, b = _median(docs, k), _median(docs, k, "llama_cpp_tokens_per_s")
                if isinstance(a, float) and isinstance(b, float):
                    lines.append(f"| {name} | {k.replace('@', ' @ ')} | {a:.1f} | {b:.1f} | {a / b:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
