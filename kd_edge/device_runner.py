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
        import numpy as np

        ids = feeds["input_ids"]
        if ids.shape[0] != 1:
            raise RunnerError("run", f"llama.cpp evaluates one sequence at a time; bench at batch 1 (not {ids.shape[0]})")
        self.llm.reset()
        self.llm.eval([int(t) for t in ids[0]])
        # the last position's logits (llama-cpp-python keeps no copy without logits_all)
        return [np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).copy()]


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
        program = Runtime.get().load_program(path)
        self.prefill = None
        if "forward" in program.method_names:
            self.method = program.load_method("forward")
            return
        lengths = sorted(int(n.split("_")[1]) for n in program.method_names if n.startswith("prefill_"))
        fit = [t for t in lengths if t >= seq]
        if not fit:
            raise RunnerError("load", f"{os.path.basename(path)} has no prefill method for {seq} tokens (longest: "
                                      f"{lengths[-1] if lengths else 'none'}); bench at a shorter --seq")
        self.prefill = fit[0]
        meta = program.metadata(f"prefill_{self.prefill}")
        self.buffers = [torch.zeros(tuple(meta.input_tensor_meta(i).sizes())) for i in range(2, meta.num_inputs())]
        self.method = program.load_method(f"prefill_{self.prefill}")

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
        data = path + ".data"  # ONNX weights over the 2 GB protobuf limit live beside the graph
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
    return p.parse_args(argv)


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
