"""TFLite precisions through ai-edge-quantizer: int8 dynamic range, int8 weight-only, fp16 weights."""

from __future__ import annotations

from pathlib import Path

from kd_edge.errors import QuantizeError
from kd_edge.export.capture import captured

_FP16 = [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
          "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"}, "compute_precision": "FLOAT",
                        "explicit_dequantize": True, "skip_checks": False, "min_weight_elements": 0}}]


def _recipe(precision: str):
    from ai_edge_quantizer import recipe

    return {"int8": recipe.dynamic_wi8_afp32, "int8-weights": recipe.weight_only_wi8_afp32,
            "fp16": lambda: _FP16}[precision]()


def quantize_tflite(src: Path, dst: Path, *, precision: str, log_path: Path | None = None, **_: object) -> dict:
    """Quantize the fp32 TFLite file ``src`` into ``dst`` with the ai-edge-quantizer recipe for ``precision``."""
    log = log_path or dst.with_suffix(".log")
    try:
        with captured(log):  # the quantizer prints progress bars and absl lines
            from ai_edge_quantizer import quantizer

            q = quantizer.Quantizer(str(src))
            q.load_quantization_recipe(_recipe(precision))
            result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
            if dst.exists():
                dst.unlink()
            result.export_model(str(dst))
    except Exception as e:
        from kd_edge.errors import from_os_error

        if isinstance(e, OSError) and (err := from_os_error(e)) is not None:
            raise err from e
        raise QuantizeError(f"TFLite {precision} quantization of {src.name} failed: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}; see {log}, or drop this precision") from e
    method = {"int8": "dynamic_wi8_afp32 (int8 weights per channel, activations quantized at run time)",
              "int8-weights": "weight_only_wi8_afp32 (int8 weights, float compute)",
              "fp16": "float_casting (fp16 weights, float compute)"}[precision]
    return {"quantization": {"method": f"ai-edge-quantizer {method}"}}


def quantize_tflite_int8(src: Path, dst: Path, **kw: object) -> dict:
    return quantize_tflite(src, dst, precision="int8", **kw)


def quantize_tflite_int8_weights(src: Path, dst: Path, **kw: object) -> dict:
    return quantize_tflite(src, dst, precision="int8-weights", **kw)


def quantize_tflite_fp16(src: Path, dst: Path, **kw: object) -> dict:
    return quantize_tflite(src, dst, precision="fp16", **kw)
