"""ONNX Runtime GenAI at 4 bits on a run's causal-LM student: the builder's plain int4 folder, then the
export stage's fallback chain (``formats/genai.py: int4_fallback``: the builder's mixed 4/8 bits, then
kd-edge's own ONNX graph at int4 in a GenAI folder), each folder checked as the verify stage checks it.

    python benchmarks/genai_int4.py runs/smollm2-135m-to-l6 [--out /tmp/genai-int4] [--texts 400]

The fallback measures perplexity on the run's first 200 training texts (as the export stage does);
the check runs every folder through onnxruntime-genai on held-out texts: perplexity against the fp32
folder's, logits |Δ| against the student in float64, and 32 greedy tokens from 5 prompts against
PyTorch's. Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/genai-int4"))
    parser.add_argument("--texts", type=int, default=400, help="held-out texts the folders are checked on")
    parser.add_argument("--context-length", type=int, default=2048)
    args = parser.parse_args()

    import numpy as np
    import torch

    from kd_edge.checks.causal_lm import LMChecker, decoder, perplexity
    from kd_edge.formats.genai import FORMAT, build, build_int4, describe, int4_fallback
    from kd_edge.runfiles import CacheReader, RunFiles
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.kinds import ModelSource
    from kd_edge.verify.config import VerifyConfig

    student = RunFiles(args.run).student
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    log = args.out / "build.log"
    t0 = time.perf_counter()
    fp32 = args.out / "student.fp32.genai"
    build(student, [(fp32, "fp32", ())], log, args.context_length)
    info32 = {**describe(fp32, "fp32"), "name": fp32.name, "format": "genai", "precision": "fp32",
              "runtime": FORMAT.runtime}
    plain = args.out / "student.int4.genai"
    build_int4(fp32, plain, source_dir=student, log_path=log, context_length=args.context_length)
    cache = CacheReader(args.run)
    train = cache.ids("train")
    calib = [np.asarray(train[i], np.int64) for i in range(min(len(train), 200)) if len(train[i]) > 1]
    base = perplexity(decoder(fp32, info32, None), calib)

    def drop(path: Path) -> float:
        info = {**info32, "name": path.name, "precision": "int4"}
        return perplexity(decoder(path, info, None), calib) / base - 1

    kept = args.out / "plain.int4.genai"  # the plain folder, kept aside for the table
    shutil.copytree(plain, kept)
    tried = [{"attempt": "plain", "drop": round(drop(plain), 5)}]
    kw = {"source_dir": student, "log_path": log, "context_length": args.context_length}
    side = int4_fallback(fp32, plain, "int4", build_int4, kw, lambda: drop(plain), 0.03, tried)
    print(f"built and fell back in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    test = cache.ids("test")
    texts = [np.asarray(test[i], np.int64) for i in range(min(len(test), args.texts)) if len(test[i]) > 1]
    task = TASKS.get("causal_lm")()
    model = task.load_model(ModelSource(student), eager=True).eval()
    torch.set_num_threads(2)
    checker = LMChecker(model, texts)
    rows = []
    for label, folder, record in (("builder fp32", fp32, info32),
                                  ("builder int4 (RTN, blocks of 32, tied table at 4 bits)", kept, None),
                                  (f"fallback: {side.get('stored_as', 'plain kept')}", plain, side)):
        info = {**info32, **(record or {}), "name": folder.name, "format": "genai",
                "precision": "fp32" if folder == fp32 else "int4"}
        r = checker.measure(folder, info, VerifyConfig())
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "model.onnx" in p.name)
        rows.append((label, size / 1e6, size / sum(p.numel() for p in model.parameters()), r["max_abs_diff"],
                     r["perplexity"], r["greedy_same_as_pytorch"], r["greedy_agreement"]))
    ppl32 = rows[0][4]
    print(f"\nPyTorch fp32 student: perplexity {checker.student['perplexity']:.2f} on {len(texts)} held-out texts")
    print(f"fallback: {json.dumps(side.get('fallback'))}")
    print(f"tried (perplexity drop on 200 training texts): {json.dumps(tried)}\n")
    print("| folder | model MB | bytes / param | max \\|Δ\\| vs float64 | perplexity | Δ vs fp32 folder | greedy = PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, mb, bpp, diff, ppl, same, agree in rows:
        print(f"| {label} | {mb:.1f} | {bpp:.3f} | {diff:.2e} | {ppl:.2f} | {(ppl / ppl32 - 1) * 100:+.2f} % | "
              f"{same}/5 ({agree * 100:.0f} %) |")


if __name__ == "__main__":
    main()
