"""Configuration of the teacher, the student and the distillation loop."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class TeacherConfig(BaseModel):
    """The model to distill from."""

    model_config = _FROZEN

    model: str = Field(
        description="A local folder holding config.json, a Hugging Face hub id (needs network or the HF "
        "cache), or `package:NAME/SUBFOLDER` for model files shipped inside an installed Python package."
    )
    revision: str | None = Field(None, description="Hub revision (ignored for local folders).")
    trust_remote_code: bool = Field(
        False, description="Run custom modelling code shipped with the model. Only for models you trust."
    )
    pooling: Literal["auto", "mean", "cls", "max"] = Field(
        "auto",
        description="Sentence-embedding pooling; `auto` reads the sentence-transformers pooling config "
        "beside the model and falls back to mean.",
    )
    normalize: bool | None = Field(
        None, description="L2-normalise embeddings; null reads the sentence-transformers config (else true)."
    )
    batch_size: int = Field(64, gt=0, description="Batch size when computing the teacher cache.")


class StudentConfig(BaseModel):
    """How the student is built."""

    model_config = _FROZEN

    init: Literal["teacher_layers"] = Field(
        "teacher_layers",
        description="`teacher_layers`: the teacher's embeddings plus a subset of its transformer layers "
        "(DistilBERT-style), same tokenizer.",
    )
    layers: int | list[int] = Field(
        2,
        description="How many layers to keep (spread evenly, always ending with the last), or the "
        "0-based indices of the teacher layers to copy, e.g. [1, 4].",
    )


class LossConfig(BaseModel):
    """One weighted term of the distillation loss."""

    model_config = _FROZEN

    name: str = Field(description="A registered loss, e.g. embedding_cosine, embedding_mse, hidden_mse.")
    weight: float = Field(1.0, ge=0, description="Multiplier of this term in the total loss.")
    layer_map: Literal["uniform", "last"] | list[tuple[int, int]] | None = Field(
        None,
        description="For hidden-state losses: pairs (student layer, teacher layer), 1-based (0 is the "
        "embedding output); `uniform` maps student layer j to teacher layer round(j*T/S); `last` maps "
        "only the last layers.",
    )


class DistillConfig(BaseModel):
    """The training loop."""

    model_config = _FROZEN

    epochs: float = Field(3, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(32, gt=0, description="Examples per optimizer step (per process).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with a linear warm-up.")
    freeze_embeddings: bool = Field(
        False, description="Keep the (copied) embedding table fixed: faster steps, fewer moving parts."
    )
    losses: list[LossConfig] = Field(
        default_factory=lambda: [LossConfig(name="embedding_cosine")],
        description="The loss terms, summed with their weights.",
    )
    checkpoint_every: int = Field(50, gt=0, description="Save a resumable checkpoint every N steps.")
    log_every: int = Field(10, gt=0, description="Append to train/metrics.jsonl every N steps.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Mixed precision where the hardware has it (Accelerate)."
    )
    cpu: bool = Field(False, description="Train on the CPU even when a GPU is present.")

    @field_validator("losses")
    @classmethod
    def _some_loss(cls, v: list[LossConfig]) -> list[LossConfig]:
        if not v:
            raise ValueError("needs at least one loss term")
        return v
