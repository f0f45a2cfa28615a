"""Configuration of the ``export`` stage: which deployable files to produce."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kd_edge.formats import FORMATS


FormatName = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
PrecisionName = Literal[tuple(dict.fromkeys(p.name for f in FORMATS.values() for p in f.precisions))]  # type: ignore[valid-type]


def _precision_help() -> str:
    return "; ".join(f"{f.name}: {', '.join(f.precision_names)}" for f in FORMATS.values())


class ArtifactSpec(BaseModel):
    """One file to produce: a format at a precision (kd_edge/formats/ declares which exist)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: FormatName = Field(description="File format: " + ", ".join(
        f"{f.name} ({f.summary.rstrip('.')})" for f in FORMATS.values()) + ".")
    precision: PrecisionName = Field(
        "fp32", description="fp32, or a precision made from it by the format's quantizer; each format takes its own: "
        + _precision_help() + " (`kd-edge list quantizers` says what each does).")

    @model_validator(mode="after")
    def _supported(self) -> "ArtifactSpec":
        fmt = FORMATS[self.format]
        if self.precision not in fmt.precision_names:
            others = [f.name for f in FORMATS.values() if self.precision in f.precision_names]
            raise ValueError(f"{self.format} files take no {self.precision} ({self.precision} is a precision of "
                             f"{', '.join(others)}); {self.format} takes {', '.join(fmt.precision_names)}")
        return self

    @property
    def name(self) -> str:
        """The artifact's file name, e.g. ``student.int8.onnx``."""
        return FORMATS[self.format].file_name("student", self.precision)


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
    calibration_size: int = Field(200, gt=0, description="int8-static: training texts used to calibrate activations (and the ranges a .pte int8 head is smoothed by).")
    int8_fallback: bool = Field(
        True, description="When an int8 file drops the task metric by more than verify.int8_max_metric_drop, "
        "quantize again keeping sensitive nodes in float, cheapest first (static int8: the attention MatMuls; "
        "then the first and last layers and the head; TFLite: weight-only) and record which.")
    kv_cache_size: int = Field(256, gt=1, description="Causal LMs in TFLite: positions in the fixed key/value "
                               "buffers (prompt + generated tokens).")
    context_length: int | None = Field(None, gt=1, description="Causal LMs in GenAI folders: the longest context "
                                       "(prompt + generated tokens) the folder is built for: its rotary tables and "
                                       "genai_config.json's context_length. null: the model's max_position_embeddings.")
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
