#!/usr/bin/env python3
"""kd-edge device runner: measure one model in this fresh process and print one JSON document.

Standalone on purpose: it needs only the Python standard library, numpy and the one runtime that
loads the model (onnxruntime, ai-edge-litert / tflite-runtime / tensorflow.lite, llama-cpp-python
for a .gguf file, or torch for a Hugging Face folder), so it can be copied to a board or phone and run there as it is.

    python3 device_runner.py MODEL --runtime onnxruntime --batch 1 --seq 128 --threads 2 --runs 100

Phases, each timed: import of the runtime, model load, first inference, warm-up (at least
``--warmup`` runs, then until the median of the last 10 runs moves by less than 5 %, capped), timed
runs. Peak memory (VmHWM) is read after import, after load and after the runs. On failure it prints
``{"error": ..., "phase": ...}`` and exits 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

SCHEMA = "kd-edge.bench/1"
SETTLE_WINDOW = 10
SETTLE_TOLERANCE = 0.05
WARMUP_CAP_FACTOR = 10
WARMUP_CAP_S = 20.0


class RunnerError(Exception):
    """A failure with the phase it happened in."""

    def __init__(self, phase: str, message: str):
        super().__init__(message)
        self.phase = phase


# -- memory and environment -------------------------------------------------------------------------
def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB: VmHWM on Linux, ru_maxrss elsewhere."""
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def fingerprint(threads: int | None) -> dict:
    """Where this ran: CPU, cores, governor, OS, Python, emulation."""
    cpu_model, flags = None, ""
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "processor") and cpu_model is None and not value.strip().isdigit():
            cpu_model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "hostname": platform.node(), "machine": platform.machine(), "system": platform.system(),
        "release": platform.release(), "python": platform.python_version(),
        "cpu_model": cpu_model or platform.processor() or None, "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity, "threads": threads,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "avx512_vnni": "avx512_vnni" in flags.split(), "avx2": "avx2" in flags.split(),
        "emulated": bool(os.environ.get("KD_EDGE_EMULATED")),
    }


class LoadProbe:
    """What else the machine did while this process measured: CPU time of other processes (in cores)
    and time stolen by the hypervisor (%), from /proc/stat, and the load average. A figure taken while
    other processes compete for the cores it runs on is not this model's speed."""

    def __init__(self):
        self.start = self.snapshot()

    @staticmethod
    def snapshot() -> dict | None:
        stat = _read("/proc/stat")
        if not stat or not stat.startswith("cpu "):
            return None
        fields = [int(v) for v in stat.splitlines()[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        times = os.times()
        return {"busy": user + nice + system + irq + softirq, "total": sum(fields[:8]), "steal": steal,
                "own_s": times.user + times.system, "wall": time.perf_counter(), "loadavg": _loadavg()}

    def result(self) -> dict:
        end = self.snapshot()
        if self.start is None or end is None:
            return {"loadavg": _loadavg()}
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        wall = max(end["wall"] - self.start["wall"], 1e-9)
        total = max(end["total"] - self.start["total"], 1)
        other_s = (end["busy"] - self.start["busy"]) / tick - (end["own_s"] - self.start["own_s"])
        return {"other_cores": round(max(other_s, 0.0) / wall, 3),
                "steal_pct": round(100.0 * (end["steal"] - self.start["steal"]) / total, 2),
                "loadavg_before": self.start["loadavg"], "loadavg_after": end["loadavg"], "seconds": round(wall, 3)}


def _loadavg() -> float | None:
    text = _read("/proc/loadavg")
    try:
        return float(text.split()[0]) if text else (os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    except (ValueError, OSError):
        return None


# -- runtimes ----------------------------------------------------------------------------------------
class OrtBackend:
    """ONNX Runtime, CPU execution provider."""

    runtime = "onnxruntime"

    @staticmethod
    def import_runtime():
        import onnxruntime

        return onnxruntime.__version__

    def __init__(self, path: str, threads: int | None, **_):
        import onnxruntime as ort

        so = ort.SessionOptions()
        # ORT ignores CPU affinity when it picks a thread count: always set it.
        so.intra_op_num_threads = threads or 0
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        types = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32"}
        self.inputs = {i.name: types.get(i.type, "float32") for i in self.session.get_inputs()}
        # inputs beyond ids and mask: a causal LM's KV-cache step (position_ids, past key/values)
        self.extra = {i.name: i.shape for i in self.session.get_inputs() if i.name not in ("input_ids", "attention_mask")}
        self._extra_feeds: dict = {}

    def _fill(self, batch: int, seq: int) -> dict:
        """A prompt with an empty past, made once per shape (not inside the timed loop)."""
        import numpy as np

        if (batch, seq) not in self._extra_feeds:
            feeds = {}
            for name, shape in self.extra.items():
                if name == "position_ids":
                    feeds[name] = np.arange(seq, dtype=np.int64)[None].repeat(batch, 0)
                elif name == "token_type_ids":  # a BERT-like graph exported with its segment ids: one segment
                    feeds[name] = np.zeros((batch, seq), self.inputs[name])
                else:
                    dims = [d if isinstance(d, int) else (batch if i == 0 else 0) for i, d in enumerate(shape)]
                    feeds[name] = np.zeros(dims, self.inputs[name])
            self._extra_feeds[(batch, seq)] = feeds
        return self._extra_feeds[(batch, seq)]

    def run(self, feeds: dict, signature: str | None = None) -> list:
        feeds = {k: v.astype(self.inputs[k]) for k, v in feeds.items() if k in self.inputs}
        if self.extra:
            feeds.update({k: v for k, v in self._fill(*feeds["input_ids"].shape).items() if k not in feeds})
        return self.session.run(None, feeds)

    # a causal LM's KV-cache step: the prompt from an empty past, then one token at a time
    def lm_limit(self, prompt: int, total: int) -> str | None:
        return None if any(n.startswith("past_key_values") for n in self.extra) else "the graph has no KV cache"

    def lm_prompt(self, ids: list, total: int):
        import numpy as np

        self.past_names = [n for n in self.extra if n.startswith("past_key_values")]
        self.past = [np.zeros([d if isinstance(d, int) else (1 if i == 0 else 0) for i, d in enumerate(self.extra[n])],
                              np.float32) for n in self.past_names]
        self.done = 0
        return self._lm(ids)

    def lm_step(self, token: int):
        return self._lm([token])

    def _lm(self, ids: list):
        import numpy as np

        t = len(ids)
        feeds = {"input_ids": np.asarray([ids], np.int64),
                 "attention_mask": np.ones((1, self.done + t), np.int64),
                 "position_ids": np.arange(self.done, self.done + t, dtype=np.int64)[None],
                 **dict(zip(self.past_names, self.past))}
        out = self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})
        self.past, self.done = out[1:], self.done + t
        return out[0][0, -1]


def _tflite_interpreter():
    """The first TFLite interpreter available: LiteRT, then tflite-runtime, then TensorFlow."""
    import importlib

    for module, attr, package in (("ai_edge_litert.interpreter", "Interpreter", "ai-edge-litert"),
                                  ("tflite_runtime.interpreter", "Interpreter", "tflite-runtime"),
                                  ("tensorflow", "lite.Interpreter", "tensorflow")):
        try:
            interpreter = importlib.import_module(module)
        except ImportError:
            continue
        for part in attr.split("."):
            interpreter = getattr(interpreter, part)
        top = importlib.import_module(module.split(".")[0])
        return interpreter, f"{package} {getattr(top, '__version__', '?')}"
    raise RunnerError("import", "no TFLite interpreter: pip install ai-edge-litert "
                                "(or tflite-runtime, or tensorflow)")


class TfliteBackend:
    """A TFLite interpreter; fixed shapes, one signature per (batch, sequence)."""

    runtime = "tflite"

    @staticmethod
    def import_runtime():
        return _tflite_interpreter()[1]

    def __init__(self, path: str, threads: int | None, **_):
        interpreter_cls, _ = _tflite_interpreter()
        self.interpreter = interpreter_cls(model_path=path, num_threads=threads or os.cpu_count())
        self.signatures = self.interpreter.get_signature_list()
        self._runners: dict = {}
        self.shapes = self._shapes()
        self._chosen: dict = {}

    def _shapes(self) -> dict:
        """(batch, sequence) of every signature with a shape in its name: b1_s128, prefill_64 (batch 1)."""
        out = {}
        for name in self.signatures:
            if name.startswith("prefill_") and name[8:].isdigit():
                out[name] = (1, int(name[8:]))
            elif name.startswith("b") and "_s" in name:
                b, _, sq = name[1:].partition("_s")
                if b.isdigit() and sq.isdigit():
                    out[name] = (int(b), int(sq))
        return out

    def signature_for(self, batch: int, seq: int) -> str:
        """The signature that runs a (batch, seq) input: its own shape, else the shortest one of that
        batch that holds it (the input padded to it, as a deployed app pads to its buckets)."""
        if (batch, seq) in self._chosen:
            return self._chosen[(batch, seq)]
        fits = sorted((s, name) for name, (b, s) in self.shapes.items() if b == batch and s >= seq)
        if fits or (len(self.signatures) == 1 and not self.shapes):
            self._chosen[(batch, seq)] = fits[0][1] if fits else next(iter(self.signatures))
            return self._chosen[(batch, seq)]
        raise RunnerError("load", f"no signature takes batch {batch} x sequence {seq}; the file has "
                                  f"{', '.join(sorted(self.signatures))}: bench at one of those shapes, or export "
                                  "a longer one (export.tflite_shapes, --shapes)")

    @staticmethod
    def _padded(feeds: dict, seq: int) -> dict:
        import numpy as np

        out = {}
        for k, v in feeds.items():
            if v.shape[1] < seq:
                v = np.concatenate([v, np.zeros((v.shape[0], seq - v.shape[1]), v.dtype)], axis=1)
            out[k] = v
        return out

    def run(self, feeds: dict, signature: str | None = None) -> list:
        import numpy as np

        batch, seq = next(iter(feeds.values())).shape
        sig = signature or self.signature_for(batch, seq)
        shape = self.shapes.get(sig)
        if shape and shape[1] > seq:
            feeds, seq = self._padded(feeds, shape[1]), shape[1]
        if sig not in self._runners:
            self._runners[sig] = self.interpreter.get_signature_runner(sig)
        runner = self._runners[sig]
        if sig.startswith("prefill_") or sig == "decode":
            # a causal LM's step: tokens, positions, then empty key/value buffers (made once per signature)
            if ("buffers", sig) not in self._runners:
                self._runners[("buffers", sig)] = {
                    "args_1": np.arange(seq, dtype=np.int32),
                    **{n: np.zeros(d["shape"], d["dtype"]) for n, d in runner.get_input_details().items()
                       if n not in ("args_0", "args_1")}}
            out = runner(args_0=np.ascontiguousarray(feeds["input_ids"], dtype=np.int32),
                         **self._runners[("buffers", sig)])
            return [out["output_0"]]
        out = runner(**{k: np.ascontiguousarray(v, dtype=np.int32) for k, v in feeds.items()})
        return [out[k] for k in sorted(out)]

    # a causal LM: the prompt through the nearest prefill_<T> from empty buffers, then ``decode``
    def _prefills(self) -> list:
        return sorted(s for name, (_, s) in self.shapes.items() if name.startswith("prefill_"))

    def lm_limit(self, prompt: int, total: int) -> str | None:
        if "decode" not in self.signatures:
            return "the file has no decode signature"
        fit = [t for t in self._prefills() if t >= prompt]
        if not fit:
            return f"no prefill signature holds {prompt} tokens (longest: {max(self._prefills(), default=0)})"
        size = self._decode_inputs()["args_2"]["shape"][2]
        return f"fixed key/value buffers of {size} positions" if total > size else None

    def _decode_inputs(self) -> dict:
        if "decode" not in self._runners:
            self._runners["decode"] = self.interpreter.get_signature_runner("decode")
        return self._runners["decode"].get_input_details()

    def _lm_run(self, name: str, tokens, positions):
        import numpy as np

        if name not in self._runners:
            self._runners[name] = self.interpreter.get_signature_runner(name)
        out = self._runners[name](args_0=np.ascontiguousarray(tokens, np.int32),
                                  args_1=np.ascontiguousarray(positions, np.int32),
                                  **{f"args_{2 + i}": b for i, b in enumerate(self.kv)})
        self.kv = [out[f"output_{1 + i}"] for i in range(len(self.kv))]
        return out["output_0"]

    def lm_prompt(self, ids: list, total: int):
        import numpy as np

        length = next(t for t in self._prefills() if t >= len(ids))
        details = self._decode_inputs()
        self.kv = [np.zeros(details[f"args_{2 + i}"]["shape"], np.float32) for i in range(len(details) - 2)]
        tokens = np.zeros((1, length), np.int32)
        tokens[0, :len(ids)] = ids
        self.done = len(ids)
        return self._lm_run(f"prefill_{length}", tokens, np.arange(length))[0, len(ids) - 1]

    def lm_step(self, token: int):
        out = self._lm_run("decode", [[token]], [self.done])
        self.done += 1
        return out[0, -1]


class TorchBackend:
    """A Hugging Face model folder in PyTorch (the baseline): an encoder pooled into an embedding, a
    sequence classifier, or a causal LM (full-sequence logits, no KV cache)."""

    runtime = "torch"
    HEADS = ("pooled", "logits", "lm_logits")  # what the forward pass returns: kd-edge's task kinds say which

    @staticmethod
    def import_runtime():
        import torch
        import transformers  # noqa: F401

        return f"torch {torch.__version__}, transformers {transformers.__version__}"

    def __init__(self, path: str, threads: int | None, pooling: str = "mean", normalize: bool = True,
                 head: str = "pooled", auto_class: str = "AutoModel", gguf_file: str | None = None,
                 allow_pickle: bool = False, **_):
        import torch
        import transformers

        if threads:
            torch.set_num_threads(threads)
        self.torch, self.head = torch, head
        # never unpickle a checkpoint unless asked (--allow-pickle): safetensors only
        kwargs = {"gguf_file": gguf_file} if gguf_file else {"use_safetensors": None if allow_pickle else True}
        self.model = getattr(transformers, auto_class).from_pretrained(path, **kwargs).eval()
        self.pooling, self.normalize = pooling, normalize

    def run(self, feeds: dict, signature: str | None = None) -> list:
        torch = self.torch
        with torch.inference_mode():
            ids = torch.from_numpy(feeds["input_ids"].astype("int64"))
            mask = torch.from_numpy(feeds["attention_mask"].astype("int64"))
            if self.head == "logits":
                return [self.model(input_ids=ids, attention_mask=mask).logits.numpy()]
            if self.head == "lm_logits":
                return [self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()]
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            if self.pooling == "cls":
                out = hidden[:, 0]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            if self.normalize:
                out = torch.nn.functional.normalize(out, dim=-1)
            return [out.numpy()]

    # a causal LM with transformers' own KV cache
    def lm_limit(self, prompt: int, total: int) -> str | None:
        if self.head != "lm_logits":
            return "not a causal LM"
        limit = getattr(self.model.config, "max_position_embeddings", None)
        return f"the model has {limit} positions" if limit and total > limit else None

    def lm_prompt(self, ids: list, total: int):
        self.past = None
        return self._lm(ids)

    def lm_step(self, token: int):
        return self._lm([token])

    def _lm(self, ids: list):
        torch = self.torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0, -1].numpy()


class LlamaCppBackend:
    """A GGUF file in llama.cpp (llama-cpp-python): a run evaluates the prompt from an empty cache and
    returns the last position's logits, as an app's prompt processing does; batch 1."""

    runtime = "llama.cpp"
    CONTEXT = 2048

    @staticmethod
    def import_runtime():
        import llama_cpp

        return f"llama-cpp-python {llama_cpp.__version__}"

    def __init__(self, path: str, threads: int | None, seq: int = 128, **_):
        import llama_cpp

        n_ctx = max(self.CONTEXT, seq)
        threads = threads or os.cpu_count()
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, logits_all=False, verbose=False)

    def run(self, feeds: dict, signature: str | None = None) -> list:
        ids = feeds["input_ids"]
        if ids.shape[0] != 1:
            raise RunnerError("run", f"llama.cpp evaluates one sequence at a time; bench at batch 1 (not {ids.shape[0]})")
        self.llm.reset()
        self.llm.eval([int(t) for t in ids[0]])
        return [self._last()]

    def _last(self):
        """The last position's logits (llama-cpp-python keeps no copy without logits_all)."""
        import numpy as np

        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).copy()

    def lm_limit(self, prompt: int, total: int) -> str | None:
        return f"a context of {self.llm.n_ctx()} positions" if total > self.llm.n_ctx() else None

    def lm_prompt(self, ids: list, total: int):
        self.llm.reset()
        self.llm.eval([int(t) for t in ids])
        return self._last()

    def lm_step(self, token: int):
        self.llm.eval([int(token)])
        return self._last()

    def own_timers(self) -> dict:
        """llama.cpp's own count of the last prompt and steps (``llama_perf_context``, inside libllama)."""
        import llama_cpp

        perf = llama_cpp.llama_perf_context(self.llm.ctx)
        return {"prompt": perf.n_p_eval / (perf.t_p_eval_ms / 1000) if perf.t_p_eval_ms else None,
                "generate": perf.n_eval / (perf.t_eval_ms / 1000) if perf.t_eval_ms else None}

    def reset_timers(self) -> None:
        import llama_cpp

        llama_cpp.llama_perf_context_reset(self.llm.ctx)


class ExecutorchBackend:
    """An ExecuTorch .pte program (XNNPACK delegate) in ExecuTorch's runtime, batch 1: an encoder's
    ``forward`` takes (input_ids, attention_mask); a causal LM's ``prefill_<T>`` methods take (tokens,
    positions, key/value buffers), and a run is the prompt padded to the nearest T from empty buffers,
    as an app's prompt processing does."""

    runtime = "executorch"

    @staticmethod
    def import_runtime():
        import importlib.metadata

        import executorch.runtime  # noqa: F401

        return f"executorch {importlib.metadata.version('executorch')}"

    def __init__(self, path: str, threads: int | None, seq: int = 128, **_):
        import executorch.kernels.quantized  # noqa: F401  (an int8 program's embedding_byte)
        import torch
        from executorch.runtime import Runtime

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        data = os.path.splitext(path)[0] + ".ptd"  # the weights, beside the program
        self.program = program = Runtime.get().load_program(path, data_path=data if os.path.isfile(data) else None)
        self.prefill = None
        if "forward" in program.method_names:
            self.method = program.load_method("forward")
            return
        self.lengths = lengths = sorted(int(n.split("_")[1]) for n in program.method_names if n.startswith("prefill_"))
        fit = [t for t in lengths if t >= seq]
        if not fit:
            raise RunnerError("load", f"{os.path.basename(path)} has no prefill method for {seq} tokens (longest: "
                                      f"{lengths[-1] if lengths else 'none'}); bench at a shorter --seq")
        self.prefill = fit[0]
        meta = program.metadata(f"prefill_{self.prefill}")
        self.buffers = [torch.zeros(tuple(meta.input_tensor_meta(i).sizes())) for i in range(2, meta.num_inputs())]
        self.method = program.load_method(f"prefill_{self.prefill}")
        self.methods = {f"prefill_{self.prefill}": self.method}

    def run(self, feeds: dict, signature: str | None = None) -> list:
        ids = feeds["input_ids"]
        if ids.shape[0] != 1:
            raise RunnerError("run", f"the .pte program takes batch 1; bench at batch 1 (not {ids.shape[0]})")
        if self.prefill is None:
            args = [self.torch.from_numpy(feeds[k].astype("int64")) for k in ("input_ids", "attention_mask")]
            return [t.numpy() for t in self.method.execute(args)]
        tokens = self.torch.zeros(1, self.prefill, dtype=self.torch.int32)
        tokens[0, :ids.shape[1]] = self.torch.from_numpy(ids[0].astype("int32"))
        out = self.method.execute([tokens, self.torch.arange(self.prefill, dtype=self.torch.int32), *self.buffers])
        return [out[0][0, ids.shape[1] - 1].numpy()]

    # a causal LM: the prompt through the nearest prefill_<T> from empty buffers, then ``decode``
    def lm_limit(self, prompt: int, total: int) -> str | None:
        if self.prefill is None or "decode" not in self.program.method_names:
            return "the program has no prefill and decode methods"
        if prompt > self.lengths[-1]:
            return f"no prefill method holds {prompt} tokens (longest: {self.lengths[-1]})"
        size = self.buffers[0].shape[2]
        return f"fixed key/value buffers of {size} positions" if total > size else None

    def _lm_run(self, name: str, tokens, positions):
        if name not in self.methods:
            self.methods[name] = self.program.load_method(name)
        out = self.methods[name].execute([tokens, positions, *self.kv])
        self.kv = list(out[1:])
        return out[0]

    def lm_prompt(self, ids: list, total: int):
        torch = self.torch
        length = next(t for t in self.lengths if t >= len(ids))
        self.kv = [torch.zeros_like(b) for b in self.buffers]
        tokens = torch.zeros(1, length, dtype=torch.int32)
        tokens[0, :len(ids)] = torch.tensor(ids, dtype=torch.int32)
        self.done = len(ids)
        return self._lm_run(f"prefill_{length}", tokens, torch.arange(length, dtype=torch.int32))[0, len(ids) - 1].numpy()

    def lm_step(self, token: int):
        torch = self.torch
        out = self._lm_run("decode", torch.tensor([[token]], dtype=torch.int32),
                           torch.tensor([self.done], dtype=torch.int32))
        self.done += 1
        return out[0, -1].numpy()


class GenaiBackend:
    """An ONNX Runtime GenAI folder (model.onnx, genai_config.json) in onnxruntime-genai: a run appends
    the prompt to a fresh generator and reads the last position's logits, as an app's prompt
    processing does; batch 1."""

    runtime = "onnxruntime-genai"

    @staticmethod
    def import_runtime():
        import onnxruntime_genai

        return f"onnxruntime-genai {getattr(onnxruntime_genai, '__version__', '?')}"

    def __init__(self, path: str, threads: int | None, seq: int = 128, **_):
        import onnxruntime_genai as og

        config = og.Config(path)
        config.clear_providers()
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                                  "inter_op_num_threads": 1}}}}))
        self.og, self.model = og, og.Model(config)
        try:  # the positions a generator may hold (a folder built for fewer than the model has says so)
            with open(os.path.join(path, "genai_config.json")) as f:
                self.context_length = json.load(f)["model"].get("context_length")
        except (OSError, ValueError, KeyError):
            self.context_length = None

    def run(self, feeds: dict, signature: str | None = None) -> list:
        import numpy as np

        ids = feeds["input_ids"]
        if ids.shape[0] != 1:
            raise RunnerError("run", f"onnxruntime-genai runs one sequence here; bench at batch 1 (not {ids.shape[0]})")
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=ids.shape[1] + 1, batch_size=1)
        gen = self.og.Generator(self.model, params)
        gen.append_tokens(ids[0].astype(np.int32))
        return [np.array(gen.get_output("logits")[0, -1])]

    # a causal LM: a fresh generator whose key/value buffer holds ``total`` positions
    def lm_limit(self, prompt: int, total: int) -> str | None:
        limit = self.context_length
        return f"a context of {limit} positions" if limit and total > limit else None

    def lm_prompt(self, ids: list, total: int):
        import numpy as np

        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=total, batch_size=1)
        self.gen = self.og.Generator(self.model, params)
        self.gen.append_tokens(np.asarray(ids, np.int32))
        return np.array(self.gen.get_output("logits")[0, -1])

    def lm_step(self, token: int):
        import numpy as np

        self.gen.append_tokens(np.asarray([token], np.int32))
        return np.array(self.gen.get_output("logits")[0, -1])


BACKENDS = {"onnxruntime": OrtBackend, "tflite": TfliteBackend, "torch": TorchBackend, "llama.cpp": LlamaCppBackend,
            "executorch": ExecutorchBackend, "onnxruntime-genai": GenaiBackend}


# -- measurement ---------------------------------------------------------------------------------------
def make_inputs(batch: int, seq: int, seed: int = 0, vocab_size: int = 2000) -> dict:
    """Token ids and a full attention mask (every token real). Ids come from [1000, 2000) (ordinary
    words in BERT-like vocabularies, past the special and unused tokens), clipped to the vocabulary."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lo, hi = min(1000, vocab_size // 2), min(2000, vocab_size)
    ids = rng.integers(lo, hi, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), dtype=np.int64)}


def percentile(sorted_values: list, q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (as numpy's default)."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(samples_ms: list, batch: int, seed: int = 0) -> dict:
    """p50/p90/p99/mean/std/min/max, a bootstrap 95 % interval of the p50, and throughput."""
    import numpy as np

    s = sorted(samples_ms)
    arr = np.asarray(samples_ms)
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(arr, size=(1000, len(arr)), replace=True), axis=1)
    mean = float(arr.mean())
    return {
        "p50_ms": percentile(s, 50), "p90_ms": percentile(s, 90), "p99_ms": percentile(s, 99),
        "mean_ms": mean, "std_ms": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "min_ms": s[0], "max_ms": s[-1],
        "p50_ci95_ms": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
        "throughput_per_s": batch * 1000.0 / mean,
    }


def _timed(backend, feeds) -> float:
    t0 = time.perf_counter_ns()
    backend.run(feeds)
    return (time.perf_counter_ns() - t0) / 1e6


def warm_up(backend, feeds, minimum: int) -> list:
    """Run at least ``minimum`` times, then until the median of the last window settles (capped)."""
    import statistics

    times: list = []
    t_start = time.perf_counter()
    cap = max(minimum, SETTLE_WINDOW * 2) * WARMUP_CAP_FACTOR
    while len(times) < cap and time.perf_counter() - t_start < WARMUP_CAP_S:
        times.append(_timed(backend, feeds))
        if len(times) >= max(minimum, 2 * SETTLE_WINDOW):
            last = statistics.median(times[-SETTLE_WINDOW:])
            prev = statistics.median(times[-2 * SETTLE_WINDOW:-SETTLE_WINDOW])
            if abs(last - prev) <= SETTLE_TOLERANCE * prev:
                break
    return times


def _lm_ids(n: int, vocab: int, seed: int) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(min(1000, vocab // 2), min(2000, vocab), n).tolist()


def measure_lm(backend, pp: list, tg: list, ttft: int | None, vocab: int, seed: int = 0) -> dict:
    """A causal LM's speed as LLM users read it, batch 1, greedy:

    - ``pp<N>``: a prompt of N tokens evaluated from an empty cache, N / seconds;
    - ``tg<N>@<d>``: N tokens generated one at a time (each fed back) after a prompt of d tokens
      (d = 0: after one token), N / seconds of the N steps;
    - ``ttft_ms``: a prompt of ``ttft`` tokens to its first token (its logits and an argmax).

    A shape the file cannot hold (fixed buffers, no prefill that long) is ``{"na": why}``. Each shape
    runs once untimed first. llama.cpp's own timers of the same calls ride along (``llama_cpp_*``)."""
    import numpy as np

    out: dict = {}
    own = getattr(backend, "own_timers", None)
    if backend.lm_limit(4, 6) is None:
        backend.lm_prompt(_lm_ids(4, vocab, seed), 6)
        backend.lm_step(1000 % vocab)
    for n in pp:
        if (why := backend.lm_limit(n, n + 1)) is not None:
            out[f"pp{n}"] = {"na": why}
            continue
        ids = _lm_ids(n, vocab, seed + n)
        backend.lm_prompt(ids, n + 1)  # untimed: first-call allocations of this shape
        if own:
            backend.reset_timers()
        t0 = time.perf_counter()
        backend.lm_prompt(ids, n + 1)
        out[f"pp{n}"] = {"tokens_per_s": n / (time.perf_counter() - t0)}
        if own:
            out[f"pp{n}"]["llama_cpp_tokens_per_s"] = own()["prompt"]
    for n, depth in tg:
        key, prompt = f"tg{n}@{depth}", max(depth, 1)
        if (why := backend.lm_limit(prompt, prompt + n)) is not None:
            out[key] = {"na": why}
            continue
        ids = _lm_ids(prompt, vocab, seed + 7)
        logits = backend.lm_prompt(ids, prompt + n)
        backend.lm_step(int(np.argmax(logits)))  # untimed
        logits = backend.lm_prompt(ids, prompt + n)
        if own:
            backend.reset_timers()
        t0 = time.perf_counter()
        for _ in range(n):
            logits = backend.lm_step(int(np.argmax(logits)))
        out[key] = {"tokens_per_s": n / (time.perf_counter() - t0)}
        if own:
            out[key]["llama_cpp_tokens_per_s"] = own()["generate"]
    if ttft and (why := backend.lm_limit(ttft, ttft + 1)) is None:
        ids = _lm_ids(ttft, vocab, seed + 3)
        backend.lm_prompt(ids, ttft + 1)
        t0 = time.perf_counter()
        int(np.argmax(backend.lm_prompt(ids, ttft + 1)))
        out["ttft_ms"] = (time.perf_counter() - t0) * 1000
    elif ttft:
        out["ttft_ms"] = {"na": why}
    return out


def measure(args) -> dict:
    """Run every phase and return the result document."""
    phase = "import"
    result: dict = {"schema": SCHEMA, "model": os.path.basename(args.model.rstrip("/")), "runtime": args.runtime,
                    "batch": args.batch, "seq": args.seq, "threads": args.threads, "vocab_size": args.vocab_size}
    backend_cls = BACKENDS[args.runtime]
    t0 = time.perf_counter()
    try:
        import numpy as np

        result["runtime_version"] = backend_cls.import_runtime()
        result["numpy_version"] = np.__version__
    except RunnerError:
        raise
    except ImportError as e:
        raise RunnerError(phase, f"cannot import the {args.runtime} runtime ({e}); install it on this device") from e
    result["import_ms"] = (time.perf_counter() - t0) * 1000
    memory = {"after_import_mb": peak_rss_mb()}

    phase = "load"
    t0 = time.perf_counter()
    try:
        backend = backend_cls(args.model, args.threads, seq=args.seq, pooling=args.pooling, normalize=args.normalize,
                              head=args.head, auto_class=args.auto_class, gguf_file=args.gguf_file,
                              allow_pickle=args.allow_pickle)
    except RunnerError:
        raise
    except Exception as e:
        raise RunnerError(phase, f"{args.runtime} cannot load {args.model}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e
    result["load_ms"] = (time.perf_counter() - t0) * 1000
    memory["after_load_mb"] = peak_rss_mb()

    phase = "run"
    feeds = make_inputs(args.batch, args.seq, args.seed, args.vocab_size)
    if isinstance(backend, TfliteBackend):
        result["signature"] = backend.signature_for(args.batch, args.seq)
        shape = backend.shapes.get(result["signature"])
        if shape and shape[1] != args.seq:
            result["padded_to"] = shape[1]
    try:
        result["first_inference_ms"] = _timed(backend, feeds)
        warm = warm_up(backend, feeds, args.warmup)
        probe = LoadProbe()
        timed = [_timed(backend, feeds) for _ in range(args.runs)]
        result["machine_load"] = probe.result()
        if args.lm_pp or args.lm_tg:
            phase = "lm"
            if not hasattr(backend, "lm_prompt"):
                raise RunnerError(phase, f"the {args.runtime} runtime measures no token generation here")
            result["lm"] = measure_lm(backend, args.lm_pp, args.lm_tg, args.lm_ttft, args.vocab_size, args.seed)
            result["lm_settings"] = {"pp": args.lm_pp, "tg": [f"{n}@{d}" for n, d in args.lm_tg], "ttft": args.lm_ttft}
    except RunnerError:
        raise
    except Exception as e:
        raise RunnerError(phase, f"{args.runtime} failed to run {args.model}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e
    memory["after_runs_mb"] = peak_rss_mb()
    result.update({
        "warmup_runs": len(warm), "timed_runs": len(timed), "latency": latency_stats(timed, args.batch, args.seed),
        "samples_ms": [round(t, 4) for t in timed], "memory": memory,
        "peak_rss_mb": max(v for v in memory.values() if v is not None) if any(memory.values()) else None,
        "file_size_bytes": _size(args.model), "environment": fingerprint(args.threads),
    })
    return result


def _size(path: str) -> int:
    if os.path.isfile(path):
        # ONNX weights over the 2 GB protobuf limit live beside the graph; a .pte's in its .ptd
        data = path + ".data" if not path.endswith(".pte") else os.path.splitext(path)[0] + ".ptd"
        return os.path.getsize(path) + (os.path.getsize(data) if os.path.isfile(data) else 0)
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if f.endswith((".safetensors", ".bin", ".gguf", ".onnx", ".onnx.data")))  # a GenAI folder: its graph
    return total


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Measure one model's latency and memory; print JSON.")
    p.add_argument("model", help="an .onnx, .tflite, .gguf or .pte file, a GenAI folder, or a Hugging Face model folder "
                                 "(runtime torch)")
    p.add_argument("--runtime", choices=sorted(BACKENDS), required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=30000, help="token ids are drawn below this")
    p.add_argument("--pooling", default="mean", help="torch runtime: pooling of the encoder output")
    p.add_argument("--normalize", action="store_true", help="torch runtime: L2-normalise the embedding")
    p.add_argument("--head", default="pooled", choices=TorchBackend.HEADS,
                   help="torch runtime: pooled encoder output, class logits, or a causal LM's logits")
    p.add_argument("--auto-class", default="AutoModel", help="torch runtime: the transformers Auto class to load")
    p.add_argument("--gguf-file", default=None, help="torch runtime: a .gguf file inside the folder")
    p.add_argument("--allow-pickle", action="store_true",
                   help="torch runtime: load pytorch_model.bin when there are no safetensors (runs the pickle)")
    p.add_argument("--lm-pp", type=_ints, default=[], metavar="N,N",
                   help="a causal LM: also measure prompt processing of these lengths (tokens/s), e.g. 128,512")
    p.add_argument("--lm-tg", type=_depths, default=[], metavar="N@D,...",
                   help="a causal LM: also measure generating N tokens after a prompt of D, e.g. 32@0,128@512")
    p.add_argument("--lm-ttft", type=int, default=None, metavar="N",
                   help="a causal LM: time to first token after a prompt of N tokens")
    return p.parse_args(argv)


def _ints(text: str) -> list:
    return [int(x) for x in text.split(",") if x.strip()]


def _depths(text: str) -> list:
    out = []
    for item in text.split(","):
        n, _, depth = item.partition("@")
        out.append((int(n), int(depth or 0)))
    return out


def follow_parent() -> None:
    """Die with the process that started this one (Linux), when it says who it is in
    KD_EDGE_PARENT_PID: a benchmark whose kd-edge was killed must not go on loading the machine."""
    parent = os.environ.get("KD_EDGE_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # it died before the line above
        os._exit(1)


def main(argv=None) -> int:
    follow_parent()
    args = parse_args(argv)
    try:
        doc = measure(args)
    except RunnerError as e:
        print(json.dumps({"schema": SCHEMA, "error": str(e), "phase": e.phase}))
        return 3
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
