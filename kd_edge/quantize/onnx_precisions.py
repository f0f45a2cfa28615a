"""ONNX precisions: int8 dynamic, int8 static (QDQ, calibrated), fp16; and ONNX Runtime's transformer
fusions for the float graphs.

Every function takes the unfused fp32 file and writes another; none changes its input.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from kd_edge.errors import QuantizeError
from kd_edge.export import onnx_files

# Node kinds kept in float at the second fallback level (the first keeps the first and last layers).
# Fused graphs (com.microsoft Attention, SkipLayerNormalization) defeat the quantizer's shape inference;
# telling it that untyped tensors are float lets it quantize them (their MatMuls) anyway.
_FUSED_OK = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT
_LAYER = re.compile(r"/layers?\.(\d+)/")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice (pre-processing, per-axis ranges) that does not apply here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _fail(what: str, src: Path, e: Exception) -> Exception:
    """The one-line error of a failed quantization: the operating system's refusal (no space, no
    permission) as such, anything else as a failure of this precision."""
    from kd_edge.errors import from_os_error

    if isinstance(e, OSError) and (err := from_os_error(e)) is not None:
        return err
    return QuantizeError(f"{what} of {src.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}; "
                         "try another precision")


def sensitive_nodes(path: Path, level: int) -> list[str]:
    """Nodes to keep in float, cheapest first. Level 1: the MatMuls of two computed tensors (attention
    scores, and attention probabilities x values), which static int8 would quantize on both sides —
    softmax outputs in uint8 are where it loses most — and which hold no weight, so the file stays
    as small. Level 2: also every node of the first and the last transformer layer and of the output
    head, whose weights then stay float (a larger file). The other operators (LayerNorm, GELU,
    Softmax, Add) are float under every ONNX int8 here already: the quantizers only touch MatMul,
    Gemm and Gather."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    layers = sorted({int(m.group(1)) for n in graph.node if (m := _LAYER.search(n.name))})
    edge = {layers[0], layers[-1]} if layers else set()
    names = []
    for node in graph.node:
        m = _LAYER.search(node.name)
        in_edge = bool(m and int(m.group(1)) in edge)
        head = not m and any(k in node.name for k in ("classifier", "pooler", "lm_head", "score"))
        if level >= 2 and (in_edge or head):
            names.append(node.name)
        elif node.op_type in ("MatMul", "Gemm") and not any(i in inits for i in node.input):
            names.append(node.name)
    return names


def tied_table(path: Path) -> tuple[str, str, str] | None:
    """(table, lookup node, head node) when one [H, V] table serves an embedding lookup (Gather by
    column, as ``tie_embeddings`` writes it) and the output head's MatMul; else None."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in inits and any(a.name == "axis" and a.i == 1 for a in node.attribute):
            head = next((n for n in graph.node if n.op_type == "MatMul" and n.input[1] == node.input[0]), None)
            if head is not None:
                return node.input[0], node.name, head.name
    return None


def _quantize_tied_table(path: Path, table: str, lookup: str, head: str) -> dict:
    """Store the shared [H, V] table once, as int8 in blocks of the hidden dimension with one scale per
    block of each vocabulary entry, in the layout of ONNX Runtime's MatMulNBits (bits 8). The head
    becomes MatMulNBits with int8 compute (activations quantized per block too: far finer than
    dynamic int8's one scale per tensor); the lookup reads the same bytes row by row and dequantizes
    them. Returns what the sidecar records."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    init = next(i for i in graph.initializer if i.name == table)
    w = numpy_helper.to_array(init).astype(np.float32)  # [H, V]: x @ w
    k, n = w.shape
    block = next(b for b in (128, 64, 32, 16) if k % b == 0) if k % 16 == 0 else None
    if block is None:
        raise QuantizeError(f"hidden size {k} is not a multiple of 16: cannot store the tied table in blocks")
    blocks = k // block
    rows = w.T.reshape(n, blocks, block)
    scale = (np.maximum(np.abs(rows).max(-1), 1e-12) / 127.0).astype(np.float32)  # [V, blocks]
    q = (np.clip(np.round(rows / scale[..., None]), -127, 127) + 128).astype(np.uint8)  # zero point 128
    graph.initializer.remove(init)
    t = f"{table}_nbits"
    graph.initializer.extend([numpy_helper.from_array(q, t), numpy_helper.from_array(scale.reshape(-1), f"{t}_scales"),
                              numpy_helper.from_array(np.array([n, k], np.int64), f"{t}_rows_shape"),
                              numpy_helper.from_array(np.array([n, blocks], np.int64), f"{t}_scales_shape"),
                              numpy_helper.from_array(np.array([0, 0, blocks, block], np.int64), f"{t}_split"),
                              numpy_helper.from_array(np.array([0, 0, k], np.int64), f"{t}_join"),
                              numpy_helper.from_array(np.array(128.0, np.float32), f"{t}_zero_point"),
                              numpy_helper.from_array(np.array([-1], np.int64), f"{t}_last_axis")])
    nodes = list(graph.node)
    g = next(x for x in nodes if x.name == lookup)
    m = next(x for x in nodes if x.name == head)
    ids = g.input[1]
    lookup_nodes = [
        helper.make_node("Reshape", [t, f"{t}_rows_shape"], [f"{t}_rows"], name=f"{lookup}_rows"),
        helper.make_node("Gather", [f"{t}_rows", ids], [f"{t}_q"], name=f"{lookup}_int8", axis=0),
        helper.make_node("Cast", [f"{t}_q"], [f"{t}_qf"], name=f"{lookup}_cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{t}_qf", f"{t}_zero_point"], [f"{t}_centred"], name=f"{lookup}_centre"),
        helper.make_node("Reshape", [f"{t}_centred", f"{t}_split"], [f"{t}_blocks"], name=f"{lookup}_split"),
        helper.make_node("Reshape", [f"{t}_scales", f"{t}_scales_shape"], [f"{t}_scale_rows"], name=f"{lookup}_scale_rows"),
        helper.make_node("Gather", [f"{t}_scale_rows", ids], [f"{t}_token_scales"], name=f"{lookup}_scales", axis=0),
        helper.make_node("Unsqueeze", [f"{t}_token_scales", f"{t}_last_axis"], [f"{t}_token_scales_1"],
                         name=f"{lookup}_scales_axis"),
        helper.make_node("Mul", [f"{t}_blocks", f"{t}_token_scales_1"], [f"{t}_deq"], name=f"{lookup}_dequantize"),
        helper.make_node("Reshape", [f"{t}_deq", f"{t}_join"], [f"{t}_embedded"], name=f"{lookup}_join"),
        # the lookup it replaces gave [H, B, T] (columns of the table); the Transpose after it restores [B, T, H]
        helper.make_node("Transpose", [f"{t}_embedded"], [g.output[0]], name=f"{lookup}_as_columns", perm=[2, 0, 1]),
    ]
    head_nodes = [helper.make_node("MatMulNBits", [m.input[0], t, f"{t}_scales"], [m.output[0]], name=f"{head}_nbits",
                                   domain="com.microsoft", K=k, N=n, bits=8, block_size=block, accuracy_level=4)]
    for old, new in ((g, lookup_nodes), (m, head_nodes)):
        at = list(graph.node).index(old)
        graph.node.remove(old)
        for i, node in enumerate(new):
            graph.node.insert(at + i, node)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx_files.save(model, path, onnx_files.is_external(path))
    return {"tied_table": f"int8 once, blocks of {block} with a scale each (MatMulNBits bits=8, int8 compute)"}


def is_kv_step(path: Path) -> bool:
    """Whether an ONNX file is a causal LM's decoding step (it takes ``past_key_values.*``)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(i.name.startswith("past_key_values") for i in graph.input)


LM_INT8_BLOCK = 64  # an fp32 scale per 64 int8 weights: 1.06 bytes per weight (blocks of 32: 1.125)


def quantize_onnx_int8(src: Path, dst: Path, *, per_channel: bool = True, exclude: Iterable[str] = (),
                       **_: object) -> dict:
    """Dynamic int8: int8 weights (per channel), activations quantized at run time. A table shared by
    the embedding lookup and the output head is quantized once, per vocabulary entry.

    A causal LM's step gets weight-only int8 instead (MatMulNBits, symmetric blocks of 64, int8
    compute with activations quantized per block): one dynamic scale per activation tensor cost the
    SmolLM2 student +128 % perplexity, and its fallback kept 433 nodes and the tied table in float
    (156 MB against 198 MB)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if is_kv_step(src):
        return _weight_only(src, dst, bits=8, block_size=LM_INT8_BLOCK, symmetric=True, exclude=exclude)
    exclude = list(exclude)
    tied = tied_table(src)
    tied_in_float = tied is not None and (tied[1] in exclude or tied[2] in exclude)
    try:
        with _quiet():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                             nodes_to_exclude=exclude + (list(tied[1:]) if tied else []), extra_options=_FUSED_OK,
                             use_external_data_format=onnx_files.is_external(src))
            tied_info = _quantize_tied_table(dst, *tied) if tied and not tied_in_float else {}
    except Exception as e:
        onnx_files.remove(dst)
        raise _fail("int8 quantization", src, e) from e
    info = {"method": "onnxruntime.quantize_dynamic", "weight_type": "int8", "per_channel": per_channel,
            "nodes_in_float": len(exclude)}
    if tied:
        info.update(tied_info or {"tied_table": "float (kept in float by the fallback)"})
    return {"quantization": info}


CALIBRATION_PERCENTILE = 99.99


def _same_length(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Calibration feeds padded to one length (ONNX Runtime's histogram calibrators stack every
    feed's activations, so shapes must agree); padding is masked out (attention_mask 0)."""
    length = max(f["input_ids"].shape[1] for f in feeds)
    out = []
    for f in feeds:
        n = f["input_ids"].shape[1]
        out.append({k: np.pad(v, ((0, 0), (0, length - n))) for k, v in f.items()})
    return out


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._it, None)


def _int8_tables(stage: Path, dst: Path, exclude: list[str], tied: tuple[str, str, str] | None) -> dict:
    """Second step of int4 and static int8, from the ``stage`` file their MatMul quantizer wrote to
    ``dst``: embedding tables in int8 rows, dequantized after the lookup (as dynamic quantization
    stores them; a QDQ pair on a Gather would dequantize the whole table on every call), or a table
    tied to the output head as shared int8 blocks. Returns what the sidecar records of it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if tied and tied[1] not in exclude and tied[2] not in exclude:
        info = _quantize_tied_table(stage, *tied)
        onnx_files.copy(stage, dst)
        return info
    quantize_dynamic(str(stage), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"],
                     nodes_to_exclude=exclude, extra_options=_FUSED_OK,
                     use_external_data_format=onnx_files.is_external(stage))
    return {}


def _matmuls_then_tables(src: Path, dst: Path, what: str, quantize_matmuls: Callable[[Path], None],
                         exclude: list[str], tied: tuple[str, str, str] | None) -> dict:
    """int4 and static int8: ``quantize_matmuls`` writes a staging file, ``_int8_tables`` makes
    ``dst`` from it; on failure nothing is left at ``dst`` (the staging file never stays)."""
    stage = dst.with_name(f".{dst.name}.stage")
    try:
        with _quiet():
            quantize_matmuls(stage)
            return _int8_tables(stage, dst, exclude, tied)
    except Exception as e:
        onnx_files.remove(dst)
        raise _fail(what, src, e) from e
    finally:
        onnx_files.remove(stage)


def quantize_onnx_int4(src: Path, dst: Path, *, exclude: Iterable[str] = (), block_size: int = 16, **_: object) -> dict:
    """Weight-only int4: MatMul weights in blocks of ``block_size`` with a scale and a zero point
    each (ONNX Runtime's MatMulNBits, int8 compute); embedding tables int8 (a tied LM table: int8
    blocks shared by the lookup and the head, see ``_quantize_tied_table``). Blocks of 16 with zero
    points: on the 6-layer SmolLM2 student, symmetric blocks of 32 cost +9.7 % perplexity, asymmetric
    ones +8.6 %, asymmetric blocks of 16 +2.2 % for 3 MB more (HQQ and k-quant were no better)."""
    return _weight_only(src, dst, bits=4, block_size=block_size, symmetric=False, exclude=exclude)


def _weight_only(src: Path, dst: Path, *, bits: int, block_size: int, symmetric: bool, exclude: Iterable[str]) -> dict:
    """MatMul weights at ``bits`` in blocks (ONNX Runtime's MatMulNBits, int8 compute), embedding
    tables int8 (a tied table: int8 blocks shared by the lookup and the head)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    exclude = list(exclude)
    tied = tied_table(src)

    def quantize_matmuls(stage: Path) -> None:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=4, nodes_to_exclude=exclude + ([tied[2]] if tied else []))
        quantizer.process()
        quantizer.model.save_model_to_file(str(stage), use_external_data_format=onnx_files.is_external(src))

    tied_info = _matmuls_then_tables(src, dst, f"int{bits} quantization", quantize_matmuls, exclude, tied)
    zero = "symmetric" if symmetric else "with zero points"
    return {"quantization": {"method": f"onnxruntime MatMulNBits (int{bits} weights {zero}, blocks of {block_size}, "
                                       "int8 compute)", "weight_type": f"int{bits}", "nodes_in_float": len(exclude),
                             **tied_info}}


def quantize_onnx_int8_static(src: Path, dst: Path, *, per_channel: bool = True, exclude: Iterable[str] = (),
                              calibration: list[dict[str, np.ndarray]] | None = None, **_: object) -> dict:
    """Static int8 in QDQ format: MatMul weights int8 per channel, their input activations uint8 with
    ranges calibrated on ``calibration`` feeds. The range of each activation is its 99.99th
    percentile, not its extreme: transformer activations have rare outliers that would stretch a
    min/max range over the bulk of the values (on the MiniLM students, min/max calibration cost
    1.5 and 0.5 points of accuracy on training texts where the percentile cost none)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise QuantizeError(f"static int8 quantization of {src.name} needs calibration data (tokenized example "
                            "inputs); in a run it uses the recipe's training texts, on the command line pass "
                            "--calibration TEXTS.jsonl --tokenizer MODEL_DIR, or use --precision int8 (dynamic)")
    exclude = list(exclude)
    tied = tied_table(src)

    def quantize_matmuls(stage: Path) -> None:
        quantize_static(str(src), str(stage), _Reader(_same_length(calibration)), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, op_types_to_quantize=["MatMul", "Gemm"],
                        nodes_to_exclude=exclude + ([tied[2]] if tied else []),
                        extra_options={**_FUSED_OK, "CalibPercentile": CALIBRATION_PERCENTILE},
                        use_external_data_format=onnx_files.is_external(src))

    tied_info = _matmuls_then_tables(src, dst, "static int8 quantization", quantize_matmuls, exclude, tied)
    return {"quantization": {"method": f"onnxruntime.quantize_static (QDQ, {CALIBRATION_PERCENTILE}th-percentile ranges) "
                                       "+ int8 embedding tables",
                             "weight_type": "int8",
                             "activation_type": "uint8", "per_channel": per_channel,
                             "calibration_examples": len(calibration), "nodes_in_float": len(exclude), **tied_info}}


def convert_onnx_fp16(src: Path, dst: Path, **_: object) -> dict:
    """fp16 weights and compute; the graph's inputs and outputs keep their types."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx_files.save(model, dst, external=onnx_files.needs_external(onnx_files.size(src) // 2))
    except Exception as e:
        raise _fail("fp16 conversion", src, e) from e
    return {"quantization": {"method": "onnxruntime.transformers.float16", "weight_type": "fp16",
                             "io_types": "kept"}}


def fuse(src: Path, dst: Path, *, model_type: str, num_heads: int, hidden_size: int) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (attention, LayerNorm, GELU, embeddings) into ``dst``;
    returns the count of each fused operator."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet():
        model = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size)
        model.save_model_to_file(str(dst), use_external_data_format=onnx_files.is_external(src))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}
