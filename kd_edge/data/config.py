"""Configuration of the ``data`` stage: where the text comes from and how it is split."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DataConfig(BaseModel):
    """Where the training and evaluation text comes from, and how it is split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        "bundled:vader",
        description="A .jsonl, .csv, .tsv or .txt file, a folder saved by `datasets` (save_to_disk), "
        "or `bundled:vader` (the VADER sentences shipped with kd-edge).",
    )
    format: Literal["auto", "jsonl", "csv", "tsv", "text", "hf_disk"] = Field(
        "auto", description="File format; `auto` decides from the file extension."
    )
    text_field: str = Field("text", description="Column holding the input text.")
    label_field: str | None = Field(
        "label", description="Column holding the class: an id (0..K-1) or a name (positive, negative, ...); "
        "null for none. Rows whose label is empty are still used for distillation."
    )
    label_names: list[str] | None = Field(
        None, description="Class names in id order. Name labels are mapped to ids by it (default: sorted names); "
        "the report shows these names."
    )
    where: dict[str, Any] = Field(
        default_factory=dict,
        description="Keep only rows whose column equals the value (or is in the list), e.g. {source: movie}.",
    )
    test_size: float = Field(
        0.2, gt=0, description="Held-out share of the rows (a fraction below 1) or count (1 and above)."
    )
    max_samples: int | None = Field(
        None, gt=0, description="Use at most this many rows (after filtering, chosen at random): quick trials."
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per text; longer texts are truncated.")

    @field_validator("test_size")
    @classmethod
    def _whole_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("a test_size of 1 or more is a row count and must be a whole number")
        return v
