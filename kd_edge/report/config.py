"""Configuration of the ``report`` stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReportConfig(BaseModel):
    """What the report shows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str | None = Field(None, description="Report title; defaults to the recipe name.")
