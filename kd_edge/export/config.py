"""Configuration of the ``export`` stage: which deployable files to produce."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ArtifactSpec(BaseModel):
    """One file to produce: a format at a precision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["onnx", "tflite"] = Field(description="File format.")
    precision: Literal["fp32", "int8"] = Field("fp32", description="Numeric precision of the weights.")

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
