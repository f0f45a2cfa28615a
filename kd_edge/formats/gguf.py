"""GGUF for causal LMs: written by llama.cpp's own converter (``convert_hf_to_gguf.py``), quantized by
llama.cpp's own quantizer (``llama_model_quantize``) and run by llama.cpp itself (llama-cpp-python,
built from its source distribution at set-up), so the file is the one llama.cpp's tools load.

The converter is not in the llama-cpp-python wheel: ``scripts/install_llama_cpp_tools.sh`` copies it
(with its ``gguf-py`` and ``conversion/`` package) from the same source distribution into
``<venv>/share/kd-edge/llama.cpp``; ``KD_EDGE_LLAMA_CPP`` may name another llama.cpp tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.errors import DependencyError, ExportError, QuantizeError
from kd_edge.formats.base import Format, Precision

if TYPE_CHECKING:
    import numpy as np

LLAMA_CPP_VERSION = "0.3.36"  # llama-cpp-python; the converter comes from the same source distribution
GGUF_TYPES = {"fp32": "F32", "fp16": "F16", "int8": "Q8_0", "int4": "Q4_0"}
LLAMA_FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8}  # llama_ftype values (llama.h)
GGML_F32 = 0  # ggml_type value (ggml.h): the KV cache type of the fp32 check
CONTEXT = 1024  # positions a checker's or benchmark's context holds (logits of every position are kept)
INSTALL_HINT = (f"run: scripts/install_llama_cpp_tools.sh {sys.executable} (make setup does), or set "
                "KD_EDGE_LLAMA_CPP to a llama.cpp source tree")


def llama_cpp_tree() -> Path:
    """The llama.cpp tree holding ``convert_hf_to_gguf.py``, or a one-line DependencyError."""
    tree = Path(os.environ.get("KD_EDGE_LLAMA_CPP") or Path(sys.prefix) / "share" / "kd-edge" / "llama.cpp")
    if not (tree / "convert_hf_to_gguf.py").is_file():
        raise DependencyError(f"GGUF export needs llama.cpp's converter (convert_hf_to_gguf.py), which is not in "
                              f"{tree}; {INSTALL_HINT}")
    return tree


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise DependencyError("the GGUF format runs in llama.cpp, whose Python binding is not installed; run: pip "
                              f"install 'kd-edge[gguf]' (builds llama-cpp-python {LLAMA_CPP_VERSION} from source, about "
                              "11 CPU-minutes)") from e
    return llama_cpp


class GgufExporter:
    """llama.cpp's convert_hf_to_gguf.py on the model folder (config, safetensors, tokenizer), at f32."""

    def export(self, module, out: Path, *, source_dir: Path, log_path: Path, **_: object) -> dict:
        from kd_edge.export.capture import tail

        tree = llama_cpp_tree()
        _llama_cpp()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(source_dir), "--outfile", str(out),
               "--outtype", "f32"]
        with open(log_path, "ab") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tree).returncode
        if rc != 0 or not out.is_file():
            raise ExportError(f"llama.cpp's converter failed on {source_dir.name} (exit {rc}): {tail(log_path, 1)[:300]}; "
                              f"see {log_path}, or export to onnx")
        meta = read_metadata(out)
        return {"inputs": [{"name": "tokens", "dtype": "int32", "shape": ["T"]}], "outputs": ["logits"],
                "gguf_type": "F32", "stored_as": "gguf F32", "architecture": meta.get("general.architecture"),
                "context_length": meta.get(f"{meta.get('general.architecture')}.context_length"),
                "converter": f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {LLAMA_CPP_VERSION} source)"}


def read_metadata(path: Path) -> dict:
    """The scalar key/value metadata of a GGUF file (gguf-py's reader; no weights loaded)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # an array or a type this reader cannot turn into Python
            continue
    return out


def quantize_gguf(src: Path, dst: Path, *, precision: str, log_path: Path | None = None, ftype: str | None = None,
                  **_: object) -> dict:
    """``precision`` of the f32 GGUF file ``src`` by llama.cpp's quantizer (its GGUF type, or the one
    ``ftype`` names: the fallback's)."""
    import ctypes

    from kd_edge.export.capture import captured

    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    gguf_type = ftype or GGUF_TYPES[precision]
    params.ftype = LLAMA_FTYPES[gguf_type]
    params.nthread = os.cpu_count() or 1
    log = log_path or dst.with_suffix(".log")
    with captured(log):  # llama.cpp prints every tensor it quantizes
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise QuantizeError(f"llama.cpp could not quantize {src.name} to {gguf_type} (code {rc}); see {log}, "
                            "or drop this precision")
    return {"gguf_type": gguf_type, "stored_as": f"gguf {gguf_type}",
            "quantization": {"method": f"llama.cpp llama_model_quantize {gguf_type}"}}


def quantize_fp16(src: Path, dst: Path, **kw: object) -> dict:
    return quantize_gguf(src, dst, precision="fp16", **kw)


def quantize_int8(src: Path, dst: Path, **kw: object) -> dict:
    return quantize_gguf(src, dst, precision="int8", **kw)


def quantize_int4(src: Path, dst: Path, **kw: object) -> dict:
    return quantize_gguf(src, dst, precision="int4", **kw)


def five_bits(src: Path, path: Path, precision: str, quantize, kw: dict, measure, budget: float, tried: list) -> dict:
    """The 4-bit fallback: every weight matrix in Q5_0 (5-bit blocks of 32) instead of Q4_0. llama.cpp
    already keeps a tied token embedding / output table at 8 bits in Q4_0, so keeping those is no
    fallback; and the k-quants (Q4_K) need rows divisible by 256, which small models often lack."""
    path.unlink()
    extra = quantize(src, path, **{**kw, "ftype": "Q5_0"})
    drop = measure()
    tried.append({"gguf_type": "Q5_0", "drop": round(drop, 5)})
    return {**extra, "fallback": {"engaged": True, "level": 1, "kept_in_float": "every weight matrix at 5 bits "
                                  "(Q5_0) instead of 4", "nodes": [], "within_budget": drop <= budget}}


class GgufDecoder:
    """A GGUF file driven by llama.cpp: a text evaluated as one prompt (the logits of every position),
    or token by token over llama.cpp's own KV cache.

    llama.cpp keeps keys and values in F16 by default, which alone moves a model's logits by ~1e-4: an
    fp32 file is checked with an F32 cache, so that its |Δ| is the file's own; the other precisions run
    with llama.cpp's default, as they deploy. ``record`` says which."""

    def __init__(self, path: Path, info: dict, threads: int | None = None):
        llama_cpp = _llama_cpp()
        n_ctx = min(int(info.get("context_length") or CONTEXT), CONTEXT)
        cache = {"type_k": GGML_F32, "type_v": GGML_F32} if info.get("precision") == "fp32" else {}
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads or os.cpu_count(),
                                   logits_all=True, verbose=False, **cache)
        self.size = n_ctx
        self.record = {"llama_cpp_kv_cache": "F32" if cache else "F16 (llama.cpp's default)"}
        # generation as an app runs it (tokens/s is reported): a second context that keeps no logits but
        # the last position's; the weights are mapped once
        self._generate = lambda: llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx,
                                                 n_threads=threads or os.cpu_count(), logits_all=False,
                                                 verbose=False, **cache)
        self._generator = None

    def _fits(self, n: int) -> None:
        if n > self.size:
            raise ExportError(f"a text has {n} tokens, more than the {self.size} positions kd-edge gives llama.cpp's "
                              "context; shorten data.max_length")

    def logits_of(self, ids: "np.ndarray") -> "np.ndarray":
        import numpy as np

        self._fits(len(ids))
        self.llm.reset()
        self.llm.eval([int(t) for t in ids])
        return np.array(self.llm.scores[:len(ids)], np.float32)

    def decode_logits(self, ids: "np.ndarray", start: int) -> "np.ndarray":
        import numpy as np

        self._fits(len(ids))
        self.llm.reset()
        self.llm.eval([int(t) for t in ids[:start]])
        rows = []
        for pos in range(start, len(ids)):
            self.llm.eval([int(ids[pos])])
            rows.append(np.array(self.llm.scores[pos], np.float32))
        return np.stack(rows)

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        import numpy as np

        self._fits(len(prompt) + n)
        if self._generator is None:
            self._generator = self._generate()
        llm = self._generator
        llm.reset()
        llm.eval([int(t) for t in prompt])
        tokens = []
        for _ in range(n):
            nxt = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))
            tokens.append(nxt)
            if len(tokens) == n:
                break
            llm.eval([nxt])
        return tokens


class GgufFormat(Format):
    def check_installed(self) -> None:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            _llama_cpp()  # says how to install it
        super().check_installed()
        llama_cpp_tree()


FORMAT = GgufFormat(
    name="gguf", suffix=".gguf", runtime="llama.cpp",
    summary="GGUF for causal LMs by llama.cpp's converter and quantizer, run in llama.cpp (llama-cpp-python).",
    exporter="kd_edge.formats.gguf:GgufExporter", requires=("llama_cpp", "gguf"), extra="gguf",
    precisions=(
        Precision("fp32", "F32, as llama.cpp's converter writes it", 32),
        Precision("fp16", "F16 weights (llama.cpp's quantizer)", 16, "kd_edge.formats.gguf:quantize_fp16", ("llama_cpp",),
                  "gguf"),
        Precision("int8", "Q8_0: int8 weights in blocks of 32 with an fp16 scale (1.06 bytes per weight)", 8,
                  "kd_edge.formats.gguf:quantize_int8", ("llama_cpp",), "gguf"),
        Precision("int4", "Q4_0: 4-bit weights in blocks of 32 with an fp16 scale; llama.cpp keeps the output "
                  "table at 6 or 8 bits (fallback: Q5_0)", 4, "kd_edge.formats.gguf:quantize_int4", ("llama_cpp",), "gguf",
                  fallback="kd_edge.formats.gguf:five_bits"),
    ),
    lm_decoder="kd_edge.formats.gguf:GgufDecoder",
    device_modules=("llama_cpp",), device_package=f"llama-cpp-python=={LLAMA_CPP_VERSION}",
    magic=(0, b"GGUF"), needs_source_folder=True,
)
