"""Verification of exported causal LMs: logits, perplexity and greedy generation through the file.

An exported LM is one decoding step with a KV cache (see ``CausalLMKVModule``). Here it is driven the
way a device drives it: the prompt with an empty past, then one token at a time with the presents
fed back. Each file is compared with the PyTorch student on held-out texts (max/mean |Δ| of the
logits against the student in float64, both as a prompt and one token at a time over the cache;
perplexity, top-1 agreement) and on greedy generation from prompts cut from held-out texts
(the same tokens, and tokens per second for both).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from kd_edge.checks.reference import REFERENCE, Parity, in_float64
from kd_edge.checks.verdicts import metric_drop, verdict
from kd_edge.checks.generations import held_out_prompts, torch_greedy
from kd_edge.errors import ExportError

N_PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 5, 8, 32
DECODE_TEXTS = 20  # texts whose second half is also run through the one-token decode step
SIGNATURE_TEXTS = 20  # TFLite: texts also run through each longer prefill signature than their nearest


class OrtDecoder:
    """Greedy decoding through an exported KV-cache step."""

    def __init__(self, path: Path, info: dict, threads: int | None = None):
        from kd_edge.device_runner import OrtBackend

        self.session = OrtBackend(str(path), threads).session
        kv = info["kv_cache"]
        self.past_names = [i["name"] for i in info["inputs"] if i["name"].startswith("past_key_values")]
        self.kv_shape = (kv["kv_heads"], kv["head_dim"])

    def step(self, ids: np.ndarray, past: list[np.ndarray] | None, done: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits of ``ids`` [1, T] after ``done`` tokens whose keys and values are ``past``."""
        if past is None:
            past = [np.zeros((ids.shape[0], *self.kv_shape[:1], 0, self.kv_shape[1]), np.float32)
                    for _ in self.past_names]
        t = ids.shape[1]
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((ids.shape[0], done + t), np.int64),
                 "position_ids": np.arange(done, done + t, dtype=np.int64)[None].repeat(ids.shape[0], 0),
                 **dict(zip(self.past_names, past))}
        out = self.session.run(None, feeds)
        return out[0], out[1:]

    def logits_of(self, ids: np.ndarray) -> np.ndarray:
        """Logits [T, V] of one text, run as a prompt."""
        return self.step(ids[None], None, 0)[0][0]

    def decode_logits(self, ids: np.ndarray, start: int) -> np.ndarray:
        """Logits [len - start, V] of positions start.. of one text, each from a one-token step fed
        the keys and values of everything before it (the prompt ``ids[:start]`` run first)."""
        _, past = self.step(ids[None, :start], None, 0)
        rows = []
        for pos in range(start, len(ids)):
            logits, past = self.step(ids[None, pos:pos + 1], past, pos)
            rows.append(logits[0, -1])
        return np.stack(rows)

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        logits, past = self.step(np.asarray([prompt]), None, 0)
        done, tokens = len(prompt), []
        for _ in range(n):
            nxt = int(logits[0, -1].argmax())
            tokens.append(nxt)
            if len(tokens) == n:
                break
            logits, past = self.step(np.asarray([[nxt]]), past, done)
            done += 1
        return tokens


class TfliteDecoder:
    """Greedy decoding through a TFLite decoder: ``prefill_<T>`` (the prompt padded to the nearest
    length T), then ``decode`` one token at a time, the key/value buffers fed back."""

    def __init__(self, path: Path, info: dict, threads: int | None = None):
        from kd_edge.device_runner import TfliteBackend

        self.interpreter = TfliteBackend(str(path), threads).interpreter
        kv = info["kv_cache"]
        self.n_buffers, self.size = 2 * kv["layers"], kv["size"]
        self.shape = (1, kv["kv_heads"], kv["size"], kv["head_dim"])
        self.prefill = sorted((s["seq"], s["name"]) for s in info["signatures"] if s.get("kind") == "prefill")
        self.runners: dict = {}

    def _run(self, name: str, tokens: np.ndarray, positions: np.ndarray, kv: list[np.ndarray]):
        if name not in self.runners:
            self.runners[name] = self.interpreter.get_signature_runner(name)
        out = self.runners[name](args_0=tokens.astype(np.int32), args_1=positions.astype(np.int32),
                                 **{f"args_{2 + i}": kv[i] for i in range(self.n_buffers)})
        return out["output_0"], [out[f"output_{1 + i}"] for i in range(self.n_buffers)]

    def _prefill(self, ids: np.ndarray, name: str | None = None):
        name = name or self.prefill_name(len(ids))
        length = dict((n, t) for t, n in self.prefill)[name]
        tokens = np.zeros((1, length), np.int64)
        tokens[0, :len(ids)] = ids
        kv = [np.zeros(self.shape, np.float32) for _ in range(self.n_buffers)]
        return self._run(name, tokens, np.arange(length), kv)

    def prefill_name(self, n: int) -> str:
        """The prefill signature a prompt of ``n`` tokens runs through."""
        fit = [name for length, name in self.prefill if length >= n]
        if not fit:
            raise ExportError(f"a text has {n} tokens, longer than every prefill signature "
                              f"({', '.join(name for _, name in self.prefill)}); add a longer [1, T] to export.tflite_shapes")
        return fit[0]

    def logits_of(self, ids: np.ndarray, signature: str | None = None) -> np.ndarray:
        """Logits [T, V] of one text through the nearest prefill signature, or the one named."""
        return self._prefill(ids, signature)[0][0, :len(ids)]

    def decode_logits(self, ids: np.ndarray, start: int) -> np.ndarray:
        """Logits [len - start, V] of positions start.. through ``decode``, after a prefill of ``ids[:start]``."""
        _, kv = self._prefill(ids[:start])
        rows = []
        for pos in range(start, len(ids)):
            if pos >= self.size:
                break
            out, kv = self._run("decode", ids[None, pos:pos + 1], np.asarray([pos]), kv)
            rows.append(out[0, -1])
        return np.stack(rows)

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        logits, kv = self._prefill(np.asarray(prompt))
        logits, done, tokens = logits[0, len(prompt) - 1], len(prompt), []
        for _ in range(n):
            nxt = int(logits.argmax())
            tokens.append(nxt)
            if len(tokens) == n:
                break
            if done >= self.size:
                raise ExportError(f"generation reached the TFLite key/value buffer's {self.size} positions; raise "
                                  "export.kv_cache_size")
            out, kv = self._run("decode", np.asarray([[nxt]]), np.asarray([done]), kv)
            logits, done = out[0, -1], done + 1
        return tokens


def _nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int, np.ndarray]:
    """Summed next-token NLL of one text, the token count, and the argmax predictions."""
    z = logits[:-1].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum()), len(ids) - 1, logits[:-1].argmax(-1)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two generations share before they first differ."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def decoder(path: Path, info: dict, threads: int | None):
    """The decoder that drives an exported LM file in its own runtime, as its format declares."""
    from kd_edge.formats import format_named, load

    fmt = format_named(info["format"])
    if fmt.lm_decoder is None:
        raise ExportError(f"{path.name}: {fmt.name} files hold encoders; a causal LM cannot be checked in one")
    return load(fmt.lm_decoder)(path, info, threads)


def perplexity(dec, texts: list[np.ndarray]) -> float:
    """Perplexity of ``texts`` through a decoder, each text run as one prompt."""
    nll = count = 0.0
    for t in texts:
        value, n, _ = _nll(dec.logits_of(t), t)
        nll, count = nll + value, count + n
    return math.exp(nll / count)


class LMChecker:
    """Measures exported LM files against the PyTorch model on held-out texts (token ids, each at
    least two tokens): logits |Δ| against the model in float64, as a prompt and one token at a time
    over the cache; perplexity and top-1 agreement; greedy generation from ``N_PROMPTS`` prompts cut
    from the texts. Shared by the verify stage and ``kd-edge export MODEL_DIR``."""

    def __init__(self, model, texts: list[np.ndarray], threads: int | None = None):
        import torch

        self.texts, self.threads = texts, threads
        self.prompts = held_out_prompts(texts, N_PROMPTS, PROMPT_TOKENS)
        self.reference, self.predictions, nll_sum, self.tokens = [], [], 0.0, 0
        with torch.no_grad():
            for t in texts:
                z = model(input_ids=torch.from_numpy(t)[None], use_cache=False).logits[0].numpy()
                self.reference.append(z)
                nll, n, pred = _nll(z, t)
                nll_sum, self.tokens = nll_sum + nll, self.tokens + n
                self.predictions.append(pred)
        with in_float64(model):
            self.exact = [model(input_ids=torch.from_numpy(t)[None], use_cache=False).logits[0].numpy() for t in texts]
        self.decode_texts = [i for i, t in enumerate(texts) if len(t) >= 4][:DECODE_TEXTS]
        t0 = time.perf_counter()
        self.torch_tokens = [torch_greedy(model, p, NEW_TOKENS) for p in self.prompts]
        torch_tps = len(self.prompts) * NEW_TOKENS / (time.perf_counter() - t0)
        self.student = {"perplexity": math.exp(nll_sum / self.tokens), "generation_tokens_per_s": torch_tps,
                        "n_texts": len(texts), "n_tokens": self.tokens, "reference": REFERENCE,
                        "pytorch_fp32_max_abs_diff": max(float(np.abs(r - e).max())
                                                         for r, e in zip(self.reference, self.exact))}

    def measure(self, path: Path, info: dict, cfg) -> dict:
        """The record of one file, with its verdict under ``cfg`` (a VerifyConfig)."""
        dec = decoder(path, info, self.threads)
        buckets = getattr(dec, "prefill", None)  # TFLite: (length, signature) of every prefill
        parity = Parity(cfg.fp32_atol, cfg.fp32_rtol)
        worst: dict[str, float] = {}  # max |Δ| by the signature (TFLite) or step kind (ONNX) that gave it
        sum_diff, count, vs_fp32, nll_sum, agree = 0.0, 0, 0.0, 0.0, 0
        for t, ref, ex, pred in zip(self.texts, self.reference, self.exact, self.predictions):
            z = dec.logits_of(t)
            diff = np.abs(z - ex)
            key = dec.prefill_name(len(t)) if buckets else "prompt"
            worst[key] = max(worst.get(key, 0.0), parity.add(z, ex))
            sum_diff, count = sum_diff + float(diff.sum()), count + diff.size
            vs_fp32 = max(vs_fp32, float(np.abs(z - ref).max()))
            nll, _, p = _nll(z, t)
            nll_sum, agree = nll_sum + nll, agree + int((p == pred).sum())
        if buckets:  # every prefill signature, not only the nearest of each text
            for length, name in buckets:
                fit = [i for i, t in enumerate(self.texts) if len(t) <= length and dec.prefill_name(len(t)) != name]
                for i in fit[:SIGNATURE_TEXTS]:
                    z = dec.logits_of(self.texts[i], name)
                    worst[name] = max(worst.get(name, 0.0), parity.add(z, self.exact[i]))
                    vs_fp32 = max(vs_fp32, float(np.abs(z - self.reference[i]).max()))
        for i in self.decode_texts:  # the one-token step over the cache, on the second half of a text
            start = len(self.texts[i]) // 2
            z = dec.decode_logits(self.texts[i], start)
            rows = slice(start, start + len(z))
            worst["decode"] = max(worst.get("decode", 0.0), parity.add(z, self.exact[i][rows]))
            vs_fp32 = max(vs_fp32, float(np.abs(z - self.reference[i][rows]).max()))
        t0 = time.perf_counter()
        file_tokens = [dec.greedy(p, NEW_TOKENS) for p in self.prompts]
        file_tps = len(self.prompts) * NEW_TOKENS / (time.perf_counter() - t0)
        same = [a == b for a, b in zip(file_tokens, self.torch_tokens)]
        prefix = [_common_prefix(a, b) / NEW_TOKENS for a, b in zip(file_tokens, self.torch_tokens)]
        record = {"name": info["name"], "format": info["format"], "precision": info["precision"],
                  "runtime": info["runtime"], "n_examples": len(self.texts), "max_abs_diff": max(worst.values()),
                  "mean_abs_diff": sum_diff / count, "decode_max_abs_diff": worst.get("decode"),
                  "decode_texts": len(self.decode_texts), "max_abs_diff_vs_pytorch_fp32": vs_fp32,
                  **({"signature_max_abs_diff": worst} if buckets else {}),
                  "perplexity": math.exp(nll_sum / self.tokens), "agreement_with_student": agree / self.tokens,
                  "greedy_prompts": len(self.prompts), "greedy_new_tokens": NEW_TOKENS,
                  "greedy_same_as_pytorch": sum(same),
                  "greedy_agreement": sum(prefix) / len(prefix) if prefix else None,
                  "greedy_tokens_matching": sum(sum(x == y for x, y in zip(a, b))
                                                for a, b in zip(file_tokens, self.torch_tokens)),
                  "generation_tokens_per_s": file_tps,
                  "pytorch_generation_tokens_per_s": self.student["generation_tokens_per_s"], **parity.record(),
                  **getattr(dec, "record", {})}  # what the runtime was set to (llama.cpp's KV cache type)
        record["passed"], record["reason"] = verdict(info, record, self.student, "perplexity", cfg)
        if info["precision"] == "fp32" and not all(same):
            record["passed"] = False
            record["reason"] += f"; greedy generation differs from PyTorch on {len(same) - sum(same)} of {len(same)} prompts"
        elif info["precision"] == "fp32":
            record["reason"] += f"; same {NEW_TOKENS} greedy tokens as PyTorch on {len(same)} prompts"
        elif prefix:
            # perplexity alone can pass a file whose text is not the student's: greedy agreement counts too
            share = record["greedy_agreement"]
            held = share >= cfg.lm_min_greedy_agreement
            record["passed"] = record["passed"] and held
            record["reason"] += (f"; greedy agreement {share * 100:.0f} % {'≥' if held else '<'} "
                                 f"{cfg.lm_min_greedy_agreement * 100:.0f} % ({sum(same)} of {len(same)} prompts "
                                 f"give the student's {NEW_TOKENS} tokens)")
        record["perplexity_increase"] = metric_drop(self.student, record, "perplexity")
        return record
