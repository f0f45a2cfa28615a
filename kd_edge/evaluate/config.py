"""Configuration of the ``evaluate`` stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvaluateConfig(BaseModel):
    """How teacher and student are compared on the held-out split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    knn_k: int = Field(10, gt=0, description="Neighbours compared in the nearest-neighbour agreement.")
    probe: bool = Field(True, description="Fit a logistic-regression probe on train embeddings (needs labels).")
    probe_c: float = Field(1.0, gt=0, description="Inverse regularisation strength of the probe.")
    batch_size: int = Field(64, gt=0, description="Batch size when embedding the data.")
