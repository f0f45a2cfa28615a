"""ONNX Runtime dynamic int8 quantization: int8 weights, activations quantized per call."""

from __future__ import annotations

import logging
from pathlib import Path

from kd_edge.errors import QuantizeError


def quantize_onnx_int8(src: Path, dst: Path, *, per_channel: bool = True, **_: object) -> dict:
    """Quantize the fp32 model ``src`` into ``dst``; return what the sidecar records."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing advice that does not apply here
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
    except Exception as e:
        raise QuantizeError(f"int8 quantization of {src.name} failed: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}; export fp32 only") from e
    finally:
        root.setLevel(level)
    return {"quantization": {"method": "onnxruntime.quantize_dynamic", "weight_type": "int8",
                             "per_channel": per_channel}}
