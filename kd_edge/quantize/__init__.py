"""Quantization of exported files, picked by ``format:precision``."""

from __future__ import annotations

from kd_edge.registry import Registry

QUANTIZERS: Registry = Registry("quantizer")
QUANTIZERS.declare("onnx:int8", "kd_edge.quantize.onnx_int8:quantize_onnx_int8", requires=("onnxruntime",),
                   summary="ONNX Runtime dynamic int8: weights int8 (per channel), activations quantized at run time.")
