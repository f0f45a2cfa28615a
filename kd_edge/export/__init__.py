"""Export: turn the PyTorch student into files a device runtime loads (ONNX, TFLite)."""

from __future__ import annotations

from kd_edge.registry import Registry

EXPORTERS: Registry = Registry("exporter")
EXPORTERS.declare("onnx", "kd_edge.export.onnx:OnnxExporter", requires=("torch", "onnx", "onnxruntime"),
                  summary="ONNX with dynamic batch and sequence (torch.onnx), checked by onnx and loaded in ONNX Runtime.")
EXPORTERS.declare("tflite", "kd_edge.export.tflite:TfliteExporter", requires=("litert_torch", "ai_edge_litert"),
                  extra="tflite", summary="TFLite via litert-torch (no TensorFlow), one fixed-shape signature per bucket.")
