"""Quantization of exported files, picked by ``format:precision``."""

from __future__ import annotations

from kd_edge.registry import Registry

QUANTIZERS: Registry = Registry("quantizer")
_ONNX = "kd_edge.quantize.onnx_precisions"
_TFL = "kd_edge.quantize.tflite"
for _key, _target, _requires, _extra, _summary in (
    ("onnx:int8", f"{_ONNX}:quantize_onnx_int8", ("onnxruntime",), None,
     "ONNX Runtime dynamic int8: weights int8 (per channel), activations quantized at run time."),
    ("onnx:int8-static", f"{_ONNX}:quantize_onnx_int8_static", ("onnxruntime",), None,
     "ONNX Runtime static int8 (QDQ): MatMul weights int8, activations calibrated on recipe data."),
    ("onnx:int4", f"{_ONNX}:quantize_onnx_int4", ("onnxruntime",), None,
     "ONNX Runtime MatMulNBits: int4 MatMul weights in blocks of 16 (with zero points), embedding tables int8."),
    ("onnx:fp16", f"{_ONNX}:convert_onnx_fp16", ("onnxruntime",), None,
     "fp16 weights and compute, float inputs and outputs."),
    ("tflite:int8", f"{_TFL}:quantize_tflite_int8", ("ai_edge_quantizer",), "tflite",
     "ai-edge-quantizer dynamic range: int8 weights per channel, activations quantized at run time."),
    ("tflite:int8-weights", f"{_TFL}:quantize_tflite_int8_weights", ("ai_edge_quantizer",), "tflite",
     "ai-edge-quantizer weight-only: int8 weights, float compute."),
    ("tflite:fp16", f"{_TFL}:quantize_tflite_fp16", ("ai_edge_quantizer",), "tflite",
     "ai-edge-quantizer float casting: fp16 weights, float compute."),
):
    QUANTIZERS.declare(_key, _target, requires=_requires, extra=_extra, summary=_summary)
