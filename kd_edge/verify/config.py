"""Configuration of the ``verify`` stage: when an exported file counts as equal to the student."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class VerifyConfig(BaseModel):
    """Tolerances for the parity verdict of each artifact."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fp32_atol: float = Field(1e-4, gt=0, description="fp32 files: absolute part of the bound every output element "
                             "must keep, |file - student| ≤ fp32_atol + fp32_rtol · |student| (as numpy.allclose).")
    fp32_rtol: float = Field(1e-5, ge=0, description="fp32 files: relative part of that bound (logits in the tens "
                             "round to a few 1e-5 in any fp32 runtime).")
    lm_min_greedy_agreement: float = Field(
        0.75, ge=0, le=1, description="Causal LMs below fp32: the share of the student's greedy tokens a file must "
        "reproduce before its first different token, averaged over the prompts (1 = the same text everywhere).")
    int8_max_metric_drop: float = Field(
        0.01, ge=0, description="Largest drop of the task metric (e.g. probe accuracy, 0.01 = 1 point; perplexity: "
        "a relative increase, 0.01 = 1 %) at 8 and 16 bits."
    )
    int4_max_metric_drop: float = Field(
        0.03, ge=0, description="Largest drop of the task metric at 4 bits (perplexity: a relative increase, "
        "0.03 = 3 %).")
    max_examples: int | None = Field(None, gt=0, description="Verify on at most this many held-out texts.")

    def max_metric_drop(self, bits: int) -> float:
        """The budget of a file stored in ``bits`` bits per weight."""
        return self.int4_max_metric_drop if bits <= 4 else self.int8_max_metric_drop
