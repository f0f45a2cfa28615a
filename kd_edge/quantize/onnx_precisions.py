"""ONNX precisions: int8 dynamic, int8 static (QDQ, calibrated), fp16; and ONNX Runtime's transformer
fusions for the float graphs.

Every function takes the unfused fp32 file and writes another; none changes its input.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from kd_edge.errors import QuantizeError
from kd_edge.export import onnx_files

# Node kinds kept in float at the second fallback level (the first keeps the first and last layers).
SENSITIVE_OPS = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Div", "Erf", "Softmax", "Add")
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


def _fail(what: str, src: Path, e: Exception) -> QuantizeError:
    return QuantizeError(f"{what} of {src.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}; "
                         "try another precision")


def sensitive_nodes(path: Path, level: int) -> list[str]:
    """Nodes to keep in float: level 1, every node of the first and the last transformer layer and
    of the output head; level 2, also LayerNorm (or its decomposition), GELU's Erf, Softmax and the
    residual Adds (Adds of two computed tensors)."""
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
        if in_edge or head:
            names.append(node.name)
        elif level >= 2 and node.op_type in SENSITIVE_OPS:
            if node.op_type != "Add" or not any(i in inits for i in node.input):
                names.append(node.name)
    return names


def quantize_onnx_int8(src: Path, dst: Path, *, per_channel: bool = True, exclude: Iterable[str] = (),
                       **_: object) -> dict:
    """Dynamic int8: int8 weights (per channel), activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = list(exclude)
    try:
        with _quiet():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                             nodes_to_exclude=exclude, extra_options=_FUSED_OK,
                             use_external_data_format=onnx_files.is_external(src))
    except Exception as e:
        raise _fail("int8 quantization", src, e) from e
    return {"quantization": {"method": "onnxruntime.quantize_dynamic", "weight_type": "int8",
                             "per_channel": per_channel, "nodes_in_float": len(exclude)}}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._it, None)


def quantize_onnx_int8_static(src: Path, dst: Path, *, per_channel: bool = True, exclude: Iterable[str] = (),
                              calibration: list[dict[str, np.ndarray]] | None = None, **_: object) -> dict:
    """Static int8 in QDQ format: MatMul weights int8 per channel, their input activations uint8 with
    ranges calibrated (MinMax) on ``calibration`` feeds."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise QuantizeError(f"static int8 quantization of {src.name} needs calibration data (tokenized example "
                            "inputs); in a run it uses the recipe's training texts, on the command line pass "
                            "--calibration TEXTS.jsonl --tokenizer MODEL_DIR, or use --precision int8 (dynamic)")
    from onnxruntime.quantization import quantize_dynamic

    exclude = list(exclude)
    qdq = dst.with_name(f".{dst.name}.qdq")
    try:
        with _quiet():
            quantize_static(str(src), str(qdq), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["MatMul", "Gemm"],
                            nodes_to_exclude=exclude, extra_options=_FUSED_OK,
                            use_external_data_format=onnx_files.is_external(src))
            # The embedding tables (Gather) hold most of a small encoder's weights: int8 rows, dequantized
            # after the lookup, as dynamic quantization stores them. A QDQ pair on a Gather would
            # dequantize the whole table on every call.
            quantize_dynamic(str(qdq), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"],
                             nodes_to_exclude=exclude, extra_options=_FUSED_OK)
    except Exception as e:
        dst.unlink(missing_ok=True)
        raise _fail("static int8 quantization", src, e) from e
    finally:
        qdq.unlink(missing_ok=True)
    return {"quantization": {"method": "onnxruntime.quantize_static (QDQ, MinMax) + int8 embedding tables",
                             "weight_type": "int8",
                             "activation_type": "uint8", "per_channel": per_channel,
                             "calibration_examples": len(calibration), "nodes_in_float": len(exclude)}}


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
