"""Configuration of the ``evaluate`` stage."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SliceConfig(BaseModel):
    """A subset of the held-out texts whose quality is reported on its own (bias check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="Slice name (default: the column, or the first keyword).")
    column: str | None = Field(None, description="A data column: one slice per distinct value (or only `value`).")
    value: Any = Field(None, description="With column: only the rows with this value.")
    keywords: list[str] | None = Field(None, description="Texts containing any of these words (case-insensitive).")

    @model_validator(mode="after")
    def _one_kind(self) -> "SliceConfig":
        if (self.column is None) == (self.keywords is None):
            raise ValueError("a slice names either a `column` or `keywords`")
        return self

    @property
    def label(self) -> str:
        """The slice's name in reports."""
        return self.name or self.column or (self.keywords or ["slice"])[0]


class EvaluateConfig(BaseModel):
    """How teacher and student are compared on the held-out split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    knn_k: int = Field(10, gt=0, description="Neighbours compared in the nearest-neighbour agreement.")
    probe: bool = Field(True, description="Fit a logistic-regression probe on train embeddings (needs labels).")
    probe_c: float = Field(1.0, gt=0, description="Inverse regularisation strength of the probe.")
    batch_size: int = Field(64, gt=0, description="Batch size when embedding the data.")
    slices: list[SliceConfig] = Field(
        default_factory=list, description="Subsets reported on their own: a data column's values or keyword lists.")
    slice_gap_threshold: float = Field(
        0.05, ge=0, description="Flag a slice when the student's gap to the teacher there exceeds its overall gap "
        "by more than this (accuracy points as a fraction; relative perplexity for causal LMs).")
    min_slice_size: int = Field(20, ge=1, description="Slices with fewer held-out texts are reported but never flagged.")
    sample_prompts: int = Field(
        5, ge=0, description="Causal LMs: held-out prompts (the first texts, cut to sample_prompt_tokens) that the teacher "
        "and the student continue greedily in the report; 0 turns the samples off.")
    sample_prompt_tokens: int = Field(8, gt=0, description="Causal LMs: tokens of each sample prompt.")
    sample_new_tokens: int = Field(32, gt=0, description="Causal LMs: tokens each sample generates (fewer at end of text).")
    loop_threshold: float = Field(
        0.5, gt=0, le=1, description="Causal LMs: a sample loops when this share of its generated 4-grams repeats an "
        "earlier one; the report flags a student whose samples loop where the teacher's do not.")
