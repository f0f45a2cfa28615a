"""Configuration of the ``verify`` stage: when an exported file counts as equal to the student."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class VerifyConfig(BaseModel):
    """Tolerances for the parity verdict of each artifact."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fp32_max_abs_diff: float = Field(1e-4, gt=0, description="Largest |artifact - student| allowed at fp32.")
    int8_max_metric_drop: float = Field(
        0.01, ge=0, description="Largest drop of the task metric (e.g. probe accuracy, 0.01 = 1 point) at int8."
    )
    max_examples: int | None = Field(None, gt=0, description="Verify on at most this many held-out texts.")
