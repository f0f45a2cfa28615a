"""Configuration of the ``export`` stage: which deployable files to produce."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ArtifactSpec(BaseModel):
    """One file to produce: a format at a precision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["onnx", "tflite"] = Field(description="File format.")
    precision: Literal["fp32", "fp16", "int8", "int8-static", "int8-weights", "int4"] = Field(
        "fp32", description="fp32; fp16 (weights and compute in half precision, float inputs and outputs kept); "
        "int8: dynamic (int8 weights, activations quantized at run time); int8-static (ONNX only: QDQ, "
        "activations calibrated on recipe data); int8-weights (TFLite only: int8 weights, float compute); "
        "int4 (ONNX only: MatMul weights int4 in blocks, embedding tables int8).")

    @model_validator(mode="after")
    def _supported(self) -> "ArtifactSpec":
        if self.precision == "int8-static" and self.format != "onnx":
            raise ValueError("int8-static is an ONNX precision; for tflite use int8 (dynamic range) or int8-weights")
        if self.precision == "int4" and self.format != "onnx":
            raise ValueError("int4 is an ONNX precision (MatMulNBits); for tflite use int8-weights")
        if self.precision == "int8-weights" and self.format != "tflite":
            raise ValueError("int8-weights is a TFLite precision; for onnx use int8 (dynamic) or int8-static")
        return self

    @property
    def name(self) -> str:
        """The artifact's file name, e.g. ``student.int8.onnx``."""
        return f"student.{self.precision}.{self.format}"


class ExportConfig(BaseModel):
    """The deployable files and their settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artifacts: list[ArtifactSpec] = Field(
        default_factory=lambda: [
            ArtifactSpec(format="onnx", precision="fp32"),
            ArtifactSpec(format="onnx", precision="int8"),
            ArtifactSpec(format="tflite", precision="fp32"),
        ],
        description="Format x precision of each file to write into artifacts/.",
    )
    opset: int = Field(17, ge=13, le=23, description="ONNX opset.")
    int8_per_channel: bool = Field(True, description="ONNX int8: one scale per output channel of each weight.")
    optimize: bool = Field(
        True, description="ONNX fp32/fp16: apply ONNX Runtime's transformer fusions (attention, LayerNorm, GELU) "
        "when the fused graph still matches the unfused one within verify.fp32_atol; otherwise keep the "
        "unfused graph and say why. int8 files are always quantized from the unfused graph.")
    calibration_size: int = Field(200, gt=0, description="int8-static: training texts used to calibrate activations.")
    int8_fallback: bool = Field(
        True, description="When an int8 file drops the task metric by more than verify.int8_max_metric_drop, "
        "quantize again keeping sensitive nodes in float, cheapest first (static int8: the attention MatMuls; "
        "then the first and last layers and the head; TFLite: weight-only) and record which.")
    kv_cache_size: int = Field(256, gt=1, description="Causal LMs in TFLite: positions in the fixed key/value "
                               "buffers (prompt + generated tokens).")
    tflite_shapes: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1, 128)],
        description="TFLite has fixed shapes: one signature per (batch, sequence) pair, weights shared.",
    )

    @field_validator("artifacts")
    @classmethod
    def _unique(cls, v: list[ArtifactSpec]) -> list[ArtifactSpec]:
        names = [a.name for a in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"lists {', '.join(sorted(dup))} more than once")
        return v
