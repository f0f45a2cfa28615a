"""TFLite through litert-torch (no TensorFlow): fixed shapes, one signature per (batch, sequence)
bucket; a causal LM as ``prefill_<T>`` and ``decode`` signatures over fixed key/value buffers."""

from __future__ import annotations

from kd_edge.formats.base import Format, Precision

_Q = "kd_edge.quantize.tflite"


class TfliteFormat(Format):
    lm_buckets = True  # prefill_<T> signatures (Format.check_recipe: batch 1, room in the buffers)


FORMAT = TfliteFormat(
    name="tflite", suffix=".tflite", runtime="tflite",
    summary="TFLite via litert-torch (no TensorFlow), one fixed-shape signature per bucket.",
    exporter="kd_edge.export.tflite:TfliteExporter", requires=("litert_torch", "ai_edge_litert"), extra="tflite",
    precisions=(
        Precision("fp32", "the converted file", 32),
        Precision("fp16", "ai-edge-quantizer float casting: fp16 weights, float compute", 16,
                  f"{_Q}:quantize_tflite_fp16", ("ai_edge_quantizer",), "tflite"),
        Precision("int8", "ai-edge-quantizer dynamic range: int8 weights per channel, activations quantized at run "
                  "time", 8, f"{_Q}:quantize_tflite_int8", ("ai_edge_quantizer",), "tflite",
                  fallback="kd_edge.export.fallback:tflite_weights_only",
                  hint="try --precision int8-weights (int8 weights, float activations)"),
        Precision("int8-weights", "ai-edge-quantizer weight-only: int8 weights, float compute", 8,
                  f"{_Q}:quantize_tflite_int8_weights", ("ai_edge_quantizer",), "tflite"),
    ),
    encoder_outputs="kd_edge.checks.encoder:tflite_outputs", lm_decoder="kd_edge.checks.causal_lm:TfliteDecoder",
    device_modules=("ai_edge_litert", "tflite_runtime", "tensorflow"), device_package="ai-edge-litert (or tflite-runtime)",
    magic=(4, b"TFL3"), file_quantize=True,
)
