"""Lighter quantizations of ONNX and TFLite files, for when a quantized file drops the task metric past
its budget (export/run.py measures; a format's precision names its fallback in kd_edge/formats/).

Each fallback has the same signature: ``(src, path, precision, quantize, kw, measure, budget, tried)``
-- the fp32 file, the quantized file to rewrite, its precision, the precision's quantizer and its
settings, a function giving the metric drop of ``path`` now, the budget, and the list of attempts so
far (appended to) -- and returns the sidecar's fields (the quantizer's, and ``fallback``).
"""

from __future__ import annotations

from pathlib import Path


def onnx_nodes_in_float(src: Path, path: Path, precision: str, quantize, kw: dict, measure, budget: float,
                        tried: list) -> dict:
    """Quantize again with sensitive nodes in float, cheapest first: (static int8 only) the attention
    MatMuls of two computed tensors, then also the first and last layers and the output head."""
    from kd_edge.export import onnx_files
    from kd_edge.quantize.onnx_precisions import sensitive_nodes

    # Dynamic int8 leaves MatMuls of two computed tensors (level 1) in float already.
    for level in (1, 2) if precision == "int8-static" else (2,):
        exclude = sensitive_nodes(src, level)
        onnx_files.remove(path)
        extra = quantize(src, path, **{**kw, "exclude": exclude})
        drop = measure()
        tried.append({"nodes_in_float": len(exclude), "drop": round(drop, 5)})
        if drop <= budget:
            break
    kinds = "attention MatMuls (of two computed tensors) everywhere" + (
        "; first and last layers and the output head (their weights too)" if level == 2 else "")
    return {**extra, "fallback": {"engaged": True, "level": level, "kept_in_float": kinds, "nodes": exclude,
                                  "within_budget": drop <= budget}}


def tflite_weights_only(src: Path, path: Path, precision: str, quantize, kw: dict, measure, budget: float,
                        tried: list) -> dict:
    """ai-edge-quantizer recipes apply to whole op kinds; the lighter one keeps every activation (and all
    compute) in float, with the weights still int8."""
    from kd_edge.quantize.tflite import quantize_tflite_int8_weights

    path.unlink()
    extra = quantize_tflite_int8_weights(src, path, **kw)
    drop = measure()
    tried.append({"activations_in_float": True, "drop": round(drop, 5)})
    return {**extra, "fallback": {"engaged": True, "level": 1, "kept_in_float": "every activation and all compute "
                                  "(int8 weights only)", "nodes": [], "within_budget": drop <= budget}}
