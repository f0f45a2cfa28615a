"""ONNX: dynamic batch and sequence, run by ONNX Runtime; weights over 2 GB in ``<file>.data`` beside it."""

from __future__ import annotations

from pathlib import Path

from kd_edge.formats.base import Format, Precision

_Q = "kd_edge.quantize.onnx_precisions"
_FALLBACK = "kd_edge.export.fallback:onnx_nodes_in_float"


class OnnxFormat(Format):
    def companions(self, path: Path) -> list[Path]:
        from kd_edge.export import onnx_files

        return [onnx_files.data_file(path)] if onnx_files.is_external(path) else []

    def copy(self, src: Path, dst: Path) -> None:
        from kd_edge.export import onnx_files

        onnx_files.copy(src, dst)

    def remove(self, path: Path) -> None:
        from kd_edge.export import onnx_files

        onnx_files.remove(path)


FORMAT = OnnxFormat(
    name="onnx", suffix=".onnx", runtime="onnxruntime",
    summary="ONNX with dynamic batch and sequence (torch.onnx), checked by onnx and loaded in ONNX Runtime.",
    exporter="kd_edge.export.onnx:OnnxExporter", requires=("torch", "onnx", "onnxruntime"),
    precisions=(
        Precision("fp32", "the exported graph, with ONNX Runtime's transformer fusions where they keep parity", 32),
        Precision("fp16", "fp16 weights and compute, float inputs and outputs", 16, f"{_Q}:convert_onnx_fp16",
                  ("onnxruntime",)),
        Precision("int8", "ONNX Runtime dynamic int8: weights int8 (per channel), activations quantized at run time "
                  "(causal LMs: weight-only int8, MatMulNBits blocks of 64)", 8, f"{_Q}:quantize_onnx_int8", ("onnxruntime",), fallback=_FALLBACK,
                  hint="try `kd-edge quantize` on the fp32 .onnx with `-p int8 --keep-float 2` (edge layers in float)"),
        Precision("int8-static", "ONNX Runtime static int8 (QDQ): MatMul weights int8, activations calibrated on "
                  "recipe data", 8, f"{_Q}:quantize_onnx_int8_static", ("onnxruntime",), encoders_only=True,
                  fallback=_FALLBACK),
        Precision("int4", "ONNX Runtime MatMulNBits: int4 MatMul weights in blocks of 16 (with zero points), "
                  "embedding tables int8", 4, f"{_Q}:quantize_onnx_int4", ("onnxruntime",)),
    ),
    encoder_outputs="kd_edge.checks.encoder:onnx_outputs", lm_decoder="kd_edge.checks.causal_lm:OrtDecoder",
    device_modules=("onnxruntime",), device_package="onnxruntime",
    fuse="kd_edge.export.onnx:fused_graph", file_quantize=True,
)
