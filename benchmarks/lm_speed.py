"""Causal-LM speed as LLM users read it: prompt processing (pp) and token generation (tg) in tokens/s,
time to first token and peak memory, for the PyTorch student and every LM file of a run, in one
invocation; for GGUF files, llama.cpp's own count of the same work beside kd-edge's.

    python benchmarks/lm_speed.py runs/smollm2-135m-to-l6 [--rounds 3] [--threads 2] [--write]

- ``pp N``: a prompt of N tokens evaluated from an empty cache, N / seconds.
- ``tg N @ d``: N tokens generated one at a time (greedy, each fed back) after a prompt of d tokens
  (d = 0: after one token), N / seconds of the N steps.
- ``ttft``: a 128-token prompt to its first generated token (the prompt's logits and an argmax).
- peak memory: VmHWM of the process that measured the file.

Each file is measured in a fresh process per round, the files taking turns (forward, then backward),
so that every file sees the same drift of a shared machine; figures are medians over rounds. A file
that cannot hold a shape (a TFLite decoder's fixed buffers, a prefill signature it lacks) says so
instead of a figure. llama.cpp's own figure is ``llama_perf_context``'s prompt-eval and eval time of
the same calls (its timers, inside libllama), read in the same process.
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

PP = (128, 512)
TG = ((32, 0), (128, 0), (32, 512), (128, 512))
TTFT_PROMPT = 128


def _ids(n: int, vocab: int, seed: int) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(min(1000, vocab // 2), min(2000, vocab), n).tolist()


class TorchLM:
    """The PyTorch student with its own KV cache (transformers' DynamicCache), batch 1."""

    def __init__(self, folder: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        self.past = None
        self.limit = self.model.config.max_position_embeddings

    def prompt(self, ids: list[int]):
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.tensor([ids]), use_cache=True)
        self.past, self.done = out.past_key_values, len(ids)
        return out.logits[0, -1].numpy()

    def step(self, token: int):
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.tensor([[token]]), past_key_values=self.past, use_cache=True)
        self.past, self.done = out.past_key_values, self.done + 1
        return out.logits[0, -1].numpy()


class FileLM:
    """An exported LM file through kd-edge's decoder for its format (kd_edge/formats/)."""

    def __init__(self, path: Path, info: dict, threads: int):
        from kd_edge.checks.causal_lm import decoder

        self.info = info
        kv = info.get("kv_cache") or {}
        self.limit = kv.get("size") or 1 << 30  # TFLite: fixed buffers
        if info["format"] == "gguf":
            # as an app (and llama-bench) runs it: logits of the last position only, llama.cpp's default
            # F16 cache; the checker's decoder keeps every position's logits, which costs a full-vocabulary
            # matmul per prompt token
            import types

            import llama_cpp

            self.limit = 1024
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=self.limit, n_batch=512, n_threads=threads,
                                  n_threads_batch=threads, logits_all=False, verbose=False)
            self.dec = types.SimpleNamespace(llm=llm)
        else:
            self.dec = decoder(path, info, threads)
        self.prefill = sorted(s["seq"] for s in info.get("signatures", []) if s.get("kind") == "prefill")
        self.state = None

    def prompt(self, ids: list[int]):
        import numpy as np

        dec = self.dec
        if hasattr(dec, "og"):  # ONNX Runtime GenAI: a fresh generator, its own key/value buffer
            self.state = dec._generator(min(dec.size, 1024))
            self.state.append_tokens(np.asarray(ids, np.int32))
            return self.state.get_output("logits")[0, -1]
        if hasattr(dec, "step"):  # ONNX Runtime: the KV-cache step
            logits, past = dec.step(np.asarray([ids]), None, 0)
            self.state, self.done = past, len(ids)
            return logits[0, -1]
        if hasattr(dec, "interpreter"):  # TFLite: the nearest prefill signature
            logits, kv = dec._prefill(np.asarray(ids))
            self.state, self.done = kv, len(ids)
            return logits[0, len(ids) - 1]
        dec.llm.reset()  # llama.cpp
        dec.llm.eval(ids)
        self.done = len(ids)
        return _last_logits(dec.llm)

    def step(self, token: int):
        import numpy as np

        dec = self.dec
        if hasattr(dec, "og"):
            self.state.append_tokens(np.asarray([token], np.int32))
            return self.state.get_output("logits")[0, -1]
        if hasattr(dec, "step"):
            logits, self.state = dec.step(np.asarray([[token]]), self.state, self.done)
            self.done += 1
            return logits[0, -1]
        if hasattr(dec, "interpreter"):
            out, self.state = dec._run("decode", np.asarray([[token]]), np.asarray([self.done]), self.state)
            self.done += 1
            return out[0, -1]
        dec.llm.eval([token])
        self.done += 1
        return _last_logits(dec.llm)

    def cannot(self, prompt: int, total: int) -> str | None:
        """Why this file cannot run a prompt of ``prompt`` tokens and ``total`` positions, or None."""
        if self.prefill and prompt > self.prefill[-1]:
            return f"no prefill signature holds {prompt} tokens (longest: {self.prefill[-1]})"
        if total > self.limit:
            return f"fixed key/value buffers of {self.limit} positions"
        return None


def _last_logits(llm):
    """llama.cpp's logits of the last evaluated position (llama-cpp-python keeps none without logits_all)."""
    import numpy as np

    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def measure_one(path: Path, info: dict | None, threads: int, seed: int) -> dict:
    """Every figure of one model in this process."""
    import numpy as np

    from kd_edge.device_runner import peak_rss_mb

    lm = TorchLM(path, threads) if info is None else FileLM(path, info, threads)
    vocab = int((info or {}).get("vocab_size") or 49152)
    gguf = info is not None and info.get("format") == "gguf"
    out: dict = {}

    def perf():
        import llama_cpp

        return llama_cpp.llama_perf_context(lm.dec.llm.ctx)

    def why(prompt: int, total: int) -> str | None:
        if total > lm.limit:
            return f"positions past {lm.limit}"
        return lm.cannot(prompt, total) if isinstance(lm, FileLM) else None

    lm.prompt(_ids(16, vocab, seed))  # warm-up: first-call allocations, thread pools
    for n in PP:
        if (reason := why(n, n)) is not None:
            out[f"pp{n}"] = {"na": reason}
            continue
        ids = _ids(n, vocab, seed + n)
        if gguf:
            lm.dec.llm.reset()
            import llama_cpp

            llama_cpp.llama_perf_context_reset(lm.dec.llm.ctx)
        t0 = time.perf_counter()
        lm.prompt(ids)
        t = time.perf_counter() - t0
        out[f"pp{n}"] = {"tokens_per_s": n / t}
        if gguf:
            p = perf()
            out[f"pp{n}"]["llama_cpp_tokens_per_s"] = p.n_p_eval / (p.t_p_eval_ms / 1000) if p.t_p_eval_ms else None
    for n, depth in TG:
        key = f"tg{n}@{depth}"
        if (reason := why(max(depth, 1), max(depth, 1) + n)) is not None:
            out[key] = {"na": reason}
            continue
        logits = lm.prompt(_ids(max(depth, 1), vocab, seed + 7))
        if gguf:
            import llama_cpp

            llama_cpp.llama_perf_context_reset(lm.dec.llm.ctx)
        t0 = time.perf_counter()
        for _ in range(n):
            logits = lm.step(int(np.argmax(logits)))
        t = time.perf_counter() - t0
        out[key] = {"tokens_per_s": n / t}
        if gguf:
            p = perf()
            out[key]["llama_cpp_tokens_per_s"] = p.n_eval / (p.t_eval_ms / 1000) if p.t_eval_ms else None
    if why(TTFT_PROMPT, TTFT_PROMPT + 1) is None:
        t0 = time.perf_counter()
        int(np.argmax(lm.prompt(_ids(TTFT_PROMPT, vocab, seed + 3))))
        out["ttft_ms"] = (time.perf_counter() - t0) * 1000
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def models(run: Path) -> list[tuple[str, Path, dict | None]]:
    from kd_edge.runfiles import RunFiles

    files = RunFiles(run)
    rows: list[tuple[str, Path, dict | None]] = [("student (PyTorch)", files.student, None)]
    vocab = json.loads((files.student / "config.json").read_text())["vocab_size"]
    for sidecar in files.artifacts.sidecars():
        info = json.loads(sidecar.read_text())
        rows.append((info["name"], files.artifacts.file(info["name"]), {**info, "vocab_size": vocab}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--one", nargs=2, metavar=("PATH", "INFO"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child: one model, one round
        info = json.loads(args.one[1]) if args.one[1] != "-" else None
        print(json.dumps(measure_one(Path(args.one[0]), info, args.threads, seed=0)))
        return
    rows = models(args.run)
    results: dict[str, list[dict]] = {name: [] for name, _, _ in rows}
    for r in range(args.rounds):
        for name, path, info in rows if r % 2 == 0 else list(reversed(rows)):
            proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--one", str(path),
                                   json.dumps(info) if info else "-"], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name}: {proc.stderr[-2000:]}")
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
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
    head = "| model | " + " | ".join(k.replace("@", " @ ") for k in keys) + " | TTFT ms (128) | peak MB |"
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
        ttft = [d["ttft_ms"] for d in docs if "ttft_ms" in d]
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
