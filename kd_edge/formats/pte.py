"""ExecuTorch ``.pte``, lowered to the XNNPACK delegate (``to_edge_transform_and_lower``) and run in
ExecuTorch's own runtime (``executorch.runtime``). An encoder is ``torch.export`` of the export module
(batch 1, dynamic sequence, method ``forward``); a causal LM is the fixed-buffer step TFLite uses, one
static method per prefill length and ``decode`` (see ``_export_decoder``).

int8 is made at export, from the module, not from the fp32 file: torchao's ``quantize_`` turns every
``nn.Linear`` into int8 weights per output channel with activations quantized per token at run time
(the 8da8w scheme ExecuTorch's own LLM export uses; XNNPACK runs it), and every ``nn.Embedding`` into
an int8 table with a scale per row, looked up by ExecuTorch's ``quantized_decomposed::embedding_byte``
kernel. (pt2e's ``prepare_pt2e`` breaks on transformers' attention-mask indexing.)

A causal LM's output head reads the final norm's output, whose few outlier channels (|x| up to 50 where
the median is 1.4 on the SmolLM2 student) make per-token int8 activations coarse: the head alone cost
+0.9 % perplexity. With calibration texts the head is smoothed first (SmoothQuant, alpha 0.5): column j
of the head's weight is multiplied by s_j = sqrt(max|x_j| / max|w_j|) and the norm's weight divided by
it, an identity in float; a table tied to the head is looked up from the smoothed int8 rows and divided
by s again (``smooth_head``). On the SmolLM2 student: +1.28 % -> +0.54 % (eager torchao, 200 texts).

An operator the XNNPACK delegate does not take runs on ExecuTorch's portable (or quantized) kernels;
``export`` records which (``not_delegated``). One that no kernel library of the runtime has is refused
before the file is written, naming it, as is a graph ExecuTorch cannot lower at all.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.artifacts import read_json, write_json
from kd_edge.errors import DependencyError, ExportError
from kd_edge.formats.base import Format, Precision

if TYPE_CHECKING:
    import numpy as np

    from kd_edge.data.packed import Packed

EXECUTORCH_VERSION = "1.5.1"
MAX_SEQ = 512  # the dynamic sequence dimension's upper bound (XNNPACK plans memory for it)


def _executorch():
    try:
        import executorch  # noqa: F401
    except ImportError as e:
        raise DependencyError(f"the pte format needs ExecuTorch; run: pip install 'kd-edge[executorch]' "
                              f"(executorch=={EXECUTORCH_VERSION})") from e


def max_sequence(module) -> int:
    """The longest sequence the program takes: MAX_SEQ, or the model's positions if fewer."""
    config = next((m.config for m in module.modules() if hasattr(m, "config")), None)
    return min(MAX_SEQ, getattr(config, "max_position_embeddings", None) or MAX_SEQ)


def _exported(module, seq: int):
    import torch

    sample = (torch.ones(1, seq, dtype=torch.int64), torch.ones(1, seq, dtype=torch.int64))
    dim = torch.export.Dim("sequence", min=2, max=max_sequence(module))
    return torch.export.export(module, sample, dynamic_shapes=({1: dim}, {1: dim}), strict=False)


def _op_name(target) -> str:
    """``add`` for an edge op ``aten.add.Tensor``; ``quantized_decomposed::embedding_byte`` outside aten."""
    schema = getattr(target, "_schema", None)
    name = schema.name if schema is not None else getattr(target, "__name__", str(target))
    return name.removeprefix("aten::").split(".")[0]


def _runtime():
    """ExecuTorch's Python runtime with the quantized kernels (``embedding_byte``) registered."""
    from kd_edge.export.capture import captured

    with captured(Path(os.devnull)):  # the runtime prints cpuinfo lines from C++
        import executorch.kernels.quantized  # noqa: F401
        from executorch.runtime import Runtime

        return Runtime.get()


def load_program(path: Path):
    """A .pte in ExecuTorch's runtime, with its weights file."""
    data = weights_file(path)
    return _runtime().load_program(str(path), data_path=str(data) if data.is_file() else None)


def runtime_kernels() -> set[str]:
    """``namespace::name.overload`` of every operator ExecuTorch's runtime has a kernel for, outside a
    delegate (the portable and quantized kernel libraries)."""
    _runtime()
    from executorch.extension.pybindings import portable_lib

    return set(portable_lib._get_operator_names())


def missing_kernels(et) -> list[str]:
    """The operators a lowered program calls that the runtime has no kernel for."""
    kernels = runtime_kernels()
    return sorted({f"{op.name}.{op.overload}" if op.overload else op.name
                   for plan in et.executorch_program.execution_plan for op in plan.operators} - kernels)


def weights_file(path: Path) -> Path:
    """The ``.ptd`` beside a ``.pte`` holding its weights (ExecuTorch's program-data separation)."""
    return path.with_suffix(".ptd")


def _tag_weights(program, tag: str) -> None:
    """Mark every weight of an exported program for the named data file ``tag``: the delegate's and
    the portable kernels' constants land in one store, which keeps identical bytes once."""
    for ep in program.values() if isinstance(program, dict) else [program]:
        sig = ep.graph_signature
        weights = {*sig.inputs_to_parameters, *sig.inputs_to_buffers, *sig.inputs_to_lifted_tensor_constants}
        for node in ep.graph.nodes:
            if node.op == "placeholder" and node.name in weights:
                node.meta.setdefault("custom", {})["delegate_constant_tag"] = tag


def _lower(program, out: Path) -> dict:
    """XNNPACK-lower an exported program, write ``out`` and its weights ``weights_file(out)``; return
    which operators stayed outside the delegate. The weights are one named data store for XNNPACK and
    the portable kernels alike, so that a table used by both (a tied embedding and head) and whatever
    the methods share is stored once."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    tag = weights_file(out).stem
    _tag_weights(program, tag)
    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        methods = list(program) if isinstance(program, dict) else ["forward"]
        nodes = [n for m in methods for n in edge.exported_program(m).graph.nodes]
        left = Counter(_op_name(n.target) for n in nodes
                       if n.op == "call_function" and "executorch_call_delegate" not in str(n.target)
                       and "getitem" not in str(n.target))
    except Exception as e:
        op = _failing_op(e)
        raise ExportError(f"ExecuTorch could not lower the model{f' (operator {op})' if op else ''}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}; export to onnx or "
                          "tflite instead") from e
    try:
        et = edge.to_executorch(ExecutorchBackendConfig(external_constants=lambda _: tag))
    except Exception as e:
        raise ExportError(f"ExecuTorch could not write the program: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}; export to onnx or tflite instead") from e
    missing = missing_kernels(et)
    if missing:
        raise ExportError(f"the XNNPACK delegate does not take operator {', '.join(missing)} and ExecuTorch's runtime "
                          f"has no kernel for {'it' if len(missing) == 1 else 'them'}; export to onnx or tflite instead")
    with open(out, "wb") as f:
        et.write_to_file(f)
    et.write_tensor_data_to_file(str(out.parent))
    if not weights_file(out).is_file():
        raise ExportError(f"ExecuTorch wrote no {weights_file(out).name} beside {out.name}; export to onnx instead")
    delegated = sum(1 for n in nodes if "executorch_call_delegate" in str(n.target))
    return {"delegate": "XnnpackPartitioner", "delegated_subgraphs": delegated,
            "not_delegated": dict(sorted(left.items()))}


def _failing_op(e: Exception) -> str | None:
    import re

    m = re.search(r"(aten[.:]{1,2}[\w.]+)", str(e))
    return m.group(1) if m else None


def _int8_embedding(weight, scales, column_scale=None):
    """An ``nn.Module`` looking rows of the int8 table ``weight`` (a scale per row, symmetric) up through
    ``quantized_decomposed::embedding_byte``, which ExecuTorch's quantized kernels run; each row divided
    by ``column_scale`` when the table is a smoothed head's (``smooth_head``)."""
    import torch
    from executorch.exir.passes import _quant_patterns_and_replacements  # noqa: F401  (defines the op)

    class Int8Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("weight", weight.detach().to(torch.int8).contiguous())
            self.register_buffer("scales", scales.detach().float().reshape(-1).contiguous())
            self.register_buffer("inverse", None if column_scale is None else (1 / column_scale.detach().float()).contiguous())

        def forward(self, ids):
            rows = torch.ops.quantized_decomposed.embedding_byte.default(self.weight, self.scales, None, -128, 127, ids)
            return rows if self.inverse is None else rows * self.inverse

    return Int8Embedding()


SMOOTH_ALPHA = 0.5
SMOOTH_TEXTS = 32  # calibration texts (up to 128 tokens each) for the head's activation ranges


def _head_and_norm(module):
    """(model, head, norm) of a causal LM inside ``module``: its output head and the norm module whose
    output the head reads (the last LayerNorm/RMSNorm before it), or None."""
    import torch

    model = next((m for m in module.modules() if hasattr(m, "get_output_embeddings") and hasattr(m, "config")), None)
    head = model.get_output_embeddings() if model is not None else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    norms = [m for m in model.modules() if (isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm"))
             and getattr(m, "weight", None) is not None and m.weight.shape == (head.in_features,)]
    return (model, head, norms[-1]) if norms else None


def smooth_head(module, calibration: list) -> dict | None:
    """SmoothQuant on a causal LM's output head, in place (see the module docstring): the head's input
    ranges measured on ``calibration`` (feeds with ``input_ids``), checked to be the norm's output, then
    moved into the head's weight. Returns what the sidecar records, or None where nothing was done."""
    import torch

    found = _head_and_norm(module) if calibration else None
    if found is None:
        return None
    model, head, norm = found
    seen = {}

    def _norm_out(_m, _i, out):
        seen["norm"] = out.detach()

    def _head_in(_m, args):
        x = args[0].detach()
        seen["same"] = seen.get("same", True) and torch.equal(x, seen.get("norm"))
        amax = x.abs().reshape(-1, x.shape[-1]).amax(0)
        seen["amax"] = amax if "amax" not in seen else torch.maximum(seen["amax"], amax)

    hooks = [norm.register_forward_hook(_norm_out), head.register_forward_pre_hook(_head_in)]
    try:
        with torch.no_grad():
            for feed in calibration[:SMOOTH_TEXTS]:
                ids = torch.as_tensor(feed["input_ids"][:, :128], dtype=torch.long)
                model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    if not seen.get("same") or "amax" not in seen:
        return None
    with torch.no_grad():
        w = head.weight.abs().amax(0).clamp(min=1e-5)
        s = (seen["amax"].clamp(min=1e-5) ** SMOOTH_ALPHA / w ** (1 - SMOOTH_ALPHA)).clamp(min=1e-5)
        head.weight = torch.nn.Parameter(head.weight * s[None, :])  # its own tensor: a tied table stays as it was
        norm.weight.div_(s)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s)
    head.smoothing = s
    return {"head_smoothing": f"SmoothQuant alpha {SMOOTH_ALPHA} on the output head, its input ranges from "
                              f"{min(len(calibration), SMOOTH_TEXTS)} training texts"}


def int8_module(module, calibration: list | None = None):
    """A copy of ``module`` at int8 (see the module docstring): linears 8da8w, embeddings int8 per row,
    a causal LM's head smoothed first when ``calibration`` feeds are given. A table tied to a head
    (SmolLM2's) is looked up from the head's own int8 weights and scales, so that the program stores it
    once (``_lower``: the named data of the delegate and of the lookup are one). Returns (module, what
    the sidecar records of it)."""
    import copy

    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis
    from torchao.utils import unwrap_tensor_subclass

    q = copy.deepcopy(module).eval()
    linears = {id(m.weight): m for m in q.modules() if isinstance(m, torch.nn.Linear)}
    embeddings = [(name, m, linears.get(id(m.weight))) for name, m in q.named_modules()
                  if isinstance(m, torch.nn.Embedding)]
    record = smooth_head(q, calibration) or {}
    with torch.no_grad():
        quantize_(q, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)),
                  filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
    for name, table, head in embeddings:
        if head is not None and not bool(head.weight.zero_point.abs().max()):  # tied: the head's int8 rows
            lookup = _int8_embedding(head.weight.qdata, head.weight.scale, getattr(head, "smoothing", None))
        else:
            w = table.weight.detach().float()
            scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
            lookup = _int8_embedding(torch.round(w / scale[:, None]).clamp(-127, 127), scale)
        parent, _, attr = name.rpartition(".")
        setattr(q.get_submodule(parent) if parent else q, attr, lookup)
    return unwrap_tensor_subclass(q), record


def _prebuilt(base: Path, precision: str) -> Path:
    return base.parent / f"_prebuilt.{precision}{FORMAT.suffix}"


def _prebuilt_info(base: Path) -> Path:
    """What lowering the int8 program recorded (its delegated subgraphs and portable operators)."""
    return base.parent / "_prebuilt.int8.json"


class PteExporter:
    """torch.export (batch 1, sequence 2..512) -> XNNPACK -> .pte; the int8 program too when asked
    (``_prebuilt.int8.pte`` beside the fp32 one, taken by the int8 precision)."""

    def export(self, module, out: Path, *, input_names: tuple[str, ...], output_name: str, log_path: Path,
               shapes: list[tuple[int, int]] = ((1, 128),), kv_cache_size: int = 256,
               precisions: tuple[str, ...] = (), calibration=None, **_: object) -> dict:
        _executorch()
        import warnings

        from kd_edge.export.capture import captured

        with warnings.catch_warnings(), captured(log_path):  # torch.export's and ExecuTorch's chatter
            warnings.simplefilter("ignore")
            if hasattr(module, "static_step"):  # a causal LM: prefill_<T> and decode over fixed key/value buffers
                step = module.static_step(kv_cache_size, write="index_copy")
                info = _export_decoder(step, out, shapes)
                if "int8" in precisions:
                    q, record = int8_module(step, calibration() if calibration else None)
                    write_json(_prebuilt_info(out), {**_export_decoder(q, _prebuilt(out, "int8"), shapes), **record})
                return info
            info = {"inputs": [{"name": n, "dtype": "int64", "shape": [1, "sequence"]} for n in input_names],
                    "outputs": [output_name], "max_sequence": max_sequence(module),
                    **_lower(_export_encoder(module.eval()), out)}
            if "int8" in precisions:
                q, record = int8_module(module)
                write_json(_prebuilt_info(out), {**_lower(_export_encoder(q), _prebuilt(out, "int8")), **record})
        return info


def _export_encoder(module):
    try:
        return _exported(module, 16)
    except Exception as e:
        raise ExportError(f"torch.export failed on the model: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}; export to onnx instead") from e


def take_int8(src: Path, dst: Path, **_: object) -> dict:
    """The int8 program the exporter lowered beside ``src``."""
    prebuilt = _prebuilt(src, "int8")
    if not prebuilt.is_file():
        raise ExportError("an int8 .pte is made from the model, at export: run kd-edge export on the model folder "
                          "with --format pte --precision int8")
    prebuilt.replace(dst)
    weights_file(prebuilt).replace(weights_file(dst))
    method = ("torchao 8da8w (linear weights int8 per output channel, activations int8 per token at run time) in "
              "XNNPACK; embedding tables int8 per row (quantized_decomposed::embedding_byte)")
    info = read_json(_prebuilt_info(src))
    smoothing = info.pop("head_smoothing", None)
    return {**info, "quantization": {"method": method, **({"head_smoothing": smoothing} if smoothing else {})}}


def _export_decoder(step, out: Path, shapes) -> dict:
    """One program with a method per TFLite-style signature: ``prefill_<T>`` for each prompt length of
    ``export.tflite_shapes`` (the prompt padded to the nearest) and ``decode``, each taking (tokens
    [1, T] int32, positions [T] int32, key/value buffer per layer) and returning (logits, the buffers
    with those positions written). Static shapes: torch.export cannot bound a dynamic prompt length
    through transformers' attention (a guard it cannot prove), and ExecuTorch plans memory for a bound."""
    import torch

    lengths = sorted({s for _, s in shapes})
    if lengths[-1] >= step.size:
        raise ExportError(f"export.kv_cache_size ({step.size}) must exceed the longest prefill ({lengths[-1]}) to leave "
                          "room for decoding")
    programs = {}
    for name, args in step.tflite_signatures(lengths):
        try:
            programs[name] = torch.export.export(step, args, strict=False)
        except Exception as e:
            raise ExportError(f"torch.export failed on the decoder's {name}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}; export to onnx or gguf instead") from e
    info = _lower(programs, out)
    return {"inputs": [{"name": "tokens", "dtype": "int32", "shape": [1, "T"]},
                       {"name": "positions", "dtype": "int32", "shape": ["T"]}],
            "outputs": ["logits", "key/value buffers"],
            "signatures": [{"name": f"prefill_{s}", "batch": 1, "seq": s, "kind": "prefill"} for s in lengths]
            + [{"name": "decode", "batch": 1, "seq": 1, "kind": "decode"}],
            "kv_cache": step.kv_cache(), **info}


def pte_outputs(path: Path, info: dict, ids: "Packed", pad_id: int, threads: int | None,
                log_path: Path) -> "np.ndarray":
    """An encoder .pte's outputs on every text, one at a time (batch 1, unpadded), in ExecuTorch's runtime."""
    import numpy as np
    import torch

    from kd_edge.export.capture import captured

    with captured(log_path):  # the runtime prints cpuinfo lines from C++
        method = load_program(path).load_method("forward")
        rows = []
        for i in range(len(ids)):
            x = torch.as_tensor(np.asarray(ids[i], np.int64))[None]
            if x.shape[1] > info.get("max_sequence", MAX_SEQ):
                raise ExportError(f"a text has {x.shape[1]} tokens; {path.name} takes at most {info.get('max_sequence')}")
            rows.append(method.execute([x, torch.ones_like(x)])[0].numpy())
    return np.concatenate(rows)


class PteDecoder:
    """A causal-LM .pte driven as its TFLite twin is (checks/causal_lm.py: TfliteDecoder): the nearest
    ``prefill_<T>`` method, then ``decode`` one token at a time, the key/value buffers fed back."""

    def __new__(cls, path: Path, info: dict, threads: int | None = None):
        import numpy as np
        import torch

        from kd_edge.checks.causal_lm import TfliteDecoder

        class _Decoder(TfliteDecoder):
            def __init__(self):  # noqa: no TfliteDecoder.__init__: no interpreter
                kv = info["kv_cache"]
                self.n_buffers, self.size = 2 * kv["layers"], kv["size"]
                self.shape = (1, kv["kv_heads"], kv["size"], kv["head_dim"])
                self.prefill = sorted((s["seq"], s["name"]) for s in info["signatures"] if s.get("kind") == "prefill")
                if threads:
                    torch.set_num_threads(threads)
                self.program = load_program(path)
                self.runners = {}

            def _run(self, name, tokens, positions, kv):
                if name not in self.runners:
                    self.runners[name] = self.program.load_method(name)
                args = [torch.from_numpy(np.ascontiguousarray(tokens, np.int32)),
                        torch.from_numpy(np.ascontiguousarray(positions, np.int32)),
                        *[torch.from_numpy(np.ascontiguousarray(b)) for b in kv]]
                out = self.runners[name].execute(args)
                return out[0].numpy(), [t.numpy() for t in out[1:]]

        return _Decoder()


class PteFormat(Format):
    lm_buckets = True  # a causal LM's prefill_<T> methods (Format.check_recipe: batch 1, room in the buffers)

    def companions(self, path: Path) -> list[Path]:
        return [weights_file(path)] if weights_file(path).is_file() else []

    def copy(self, src: Path, dst: Path) -> None:
        import shutil

        shutil.copyfile(src, dst)
        for data in self.companions(src):
            shutil.copyfile(data, weights_file(dst))


FORMAT = PteFormat(
    name="pte", suffix=".pte", runtime="executorch",
    summary="ExecuTorch .pte lowered to the XNNPACK delegate (encoders: batch 1, dynamic sequence; causal LMs: "
            "prefill_<T> and decode methods over fixed key/value buffers), run in ExecuTorch's runtime.",
    exporter="kd_edge.formats.pte:PteExporter", requires=("executorch", "torch"), extra="executorch",
    precisions=(
        Precision("fp32", "XNNPACK fp32", 32),
        Precision("int8", "XNNPACK int8: linear weights int8 per output channel, activations int8 per token at run "
                  "time (torchao 8da8w); embedding tables int8 per row; a causal LM's head smoothed first "
                  "(SmoothQuant, ranges from calibration texts)", 8, "kd_edge.formats.pte:take_int8",
                  ("torchao",), "executorch"),
    ),
    encoder_outputs="kd_edge.formats.pte:pte_outputs", lm_decoder="kd_edge.formats.pte:PteDecoder",
    device_modules=("executorch",), device_package=f"executorch=={EXECUTORCH_VERSION}",
)
