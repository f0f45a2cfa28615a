"""Configuration of the teacher(s), the student and the distillation loop."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class HeadConfig(BaseModel):
    """A preparation step: fit a classification head on a frozen (or fine-tuned) encoder, on the
    recipe's train split, and use the result as the teacher."""

    model_config = _FROZEN

    epochs: float = Field(3, gt=0, description="Passes over the train split.")
    lr: float = Field(2e-3, gt=0, description="Learning rate of the head (and of the encoder if trained).")
    batch_size: int = Field(64, gt=0, description="Examples per step.")
    train_encoder: bool = Field(False, description="Fine-tune the encoder too (slower); default: head only.")


class ServerConfig(BaseModel):
    """A teacher served behind an OpenAI-compatible endpoint (vLLM, TGI, llama.cpp's server, a hosted
    API): it writes the sequence-level and rationale data (``distill.generate``, ``distill.rationale``
    with ``source: teacher``). Every answer is stored on disk under the hash of its request, so an
    interrupted or repeated run sends nothing twice (distill/served.py)."""

    model_config = _FROZEN

    url: str = Field(description="The API's base URL, e.g. http://127.0.0.1:8080/v1 (requests go to <url>/completions).")
    model: str = Field(description="The served model's name, as the server's /models lists it.")
    api_key_env: str | None = Field(
        None, description="The environment variable that holds the API key (sent as a bearer token); null: no key. "
        "The key itself never goes in a recipe.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    rate_limit: float | None = Field(None, gt=0, description="At most this many requests per second; null: no limit.")
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one answer before trying again.")
    retries: int = Field(4, ge=0, le=20, description="Tries after the first for a request that fails in a way that "
                         "may pass (HTTP 429 and 5xx, a timeout, a dropped connection), with exponential backoff.")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL; write e.g. http://127.0.0.1:8080/v1")
        return v.rstrip("/")


class TeacherConfig(BaseModel):
    """A model to distill from."""

    model_config = _FROZEN

    model: str = Field(
        description="A local folder holding config.json, a Hugging Face hub id (needs network or the HF "
        "cache), or `package:NAME/SUBFOLDER` for model files shipped inside an installed Python package."
    )
    gguf_file: str | None = Field(None, description="A .gguf file inside the folder to load (dequantized to fp32).")
    revision: str | None = Field(None, description="Hub revision (ignored for local folders).")
    trust_remote_code: bool = Field(
        False, description="Run custom modelling code shipped with the model. Only for models you trust."
    )
    allow_pickle: bool = Field(
        False, description="Load pickle checkpoints (pytorch_model.bin) when the folder has no safetensors. "
        "Unpickling can run code from the file: only for files you trust."
    )
    prepare_head: HeadConfig | None = Field(
        None, description="sequence_classification: the model is an encoder; first fit a classification head "
        "on the train split (stage `prepare`, written to runs/<name>/teacher/) and distill from that."
    )
    pooling: Literal["auto", "mean", "cls", "max"] = Field(
        "auto",
        description="Sentence-embedding pooling; `auto` reads the sentence-transformers pooling config "
        "beside the model and falls back to mean.",
    )
    normalize: bool | None = Field(
        None, description="L2-normalise embeddings; null reads the sentence-transformers config (else true)."
    )
    batch_size: int = Field(32, gt=0, description="Batch size when computing the teacher cache.")
    top_k: int = Field(64, gt=0, description="causal_lm: logits kept per position in the cache (with the rest mass).")
    cache_values: Literal["fp16", "curve"] = Field(
        "fp16", description="causal_lm: how the cache keeps each position's top-k log-probabilities. fp16: each one "
        "(2 bytes each; 260 bytes per token at k = 64 with the ids). curve: the 4 largest in fp16 and the rest as a "
        "degree-4 Legendre polynomial of log rank fitted to them, 5 fp16 coefficients (DistillKit's approach: 150 "
        "bytes per token at k = 64; a KL of about 1e-3 nats from the fp16 values on SmolLM2).")
    cache_dir: str | None = Field(
        None, description="Share teacher caches between runs: a folder where each cache is stored under its key "
        "(teacher files, data, cached fields). Null keeps the cache inside the run."
    )
    weight: float = Field(1.0, gt=0, description="Ensembles: this teacher's weight in the averaged target.")
    server: ServerConfig | None = Field(
        None, description="causal_lm: the teacher answers from an OpenAI-compatible server for the data it writes "
        "(distill.generate, a teacher's rationales); `model` still names the local folder with its tokenizer.")
    terms: str | None = Field(
        None, description="The terms of use of the teacher's outputs (a commercial model's may restrict distilling "
        "from them), recorded in the report with the teacher's provenance.")


class EnsembleConfig(BaseModel):
    """More teachers besides `teacher` (same label space or vocabulary)."""

    model_config = _FROZEN

    teachers: list[TeacherConfig] = Field(description="The other teachers.")
    combine: Literal["average", "per_teacher"] = Field(
        "average", description="average: one soft target, the weighted mean of the teachers' softened "
        "distributions; per_teacher: one loss term per teacher, scaled by its weight."
    )

    @field_validator("teachers")
    @classmethod
    def _some(cls, v: list[TeacherConfig]) -> list[TeacherConfig]:
        if not v:
            raise ValueError("lists no teachers; remove `ensemble` or add at least one")
        return v


class StudentConfig(BaseModel):
    """How the student is built."""

    model_config = _FROZEN

    init: Literal["teacher_layers", "config", "prune", "pretrained"] = Field(
        "teacher_layers",
        description="teacher_layers: the teacher's embeddings and head plus a subset of its layers "
        "(DistilBERT-style); config: the teacher's architecture resized (layers/width/heads/FFN); "
        "prune: the teacher cut to the sizes below, keeping the layers, FFN neurons, heads and channels its "
        "activations on the training text use most (Minitron-style); pretrained: an existing model folder (`model`).",
    )
    layers: int | list[int] = Field(
        2, description="teacher_layers: how many layers (spread evenly, ending with the last) or the 0-based "
        "teacher layers to copy, e.g. [2, 5]. config: the number of layers. prune: how many (those of highest "
        "block importance) or which teacher layers.",
    )
    hidden_size: int | None = Field(None, gt=0, description="config: width (default: the teacher's). prune: hidden "
                                    "channels kept (decoders).")
    num_attention_heads: int | None = Field(None, gt=0, description="config: attention heads (default: the "
                                            "teacher's). prune: query heads kept per layer (decoders).")
    intermediate_size: int | None = Field(None, gt=0, description="config: FFN width (default: 4 × width). prune: "
                                          "FFN neurons kept per layer.")
    params: int | None = Field(None, gt=0, description="prune: a parameter budget instead of intermediate_size; the "
                               "FFN is cut (in steps of 8 neurons) until the student fits it.")
    prune_samples: int = Field(256, gt=0, description="prune: training texts the teacher reads to score its parts.")
    shrink_from_teacher: bool = Field(
        True, description="config: start from the teacher's weights cut to the new sizes (first rows and "
        "columns, evenly spaced layers) instead of a random initialisation."
    )
    model: str | None = Field(None, description="pretrained: the student's folder or hub id.")
    allow_pickle: bool = Field(
        False, description="pretrained: load a pickle checkpoint (pytorch_model.bin) when the folder has no "
        "safetensors. Unpickling can run code from the file: only for files you trust."
    )
    tokenizer: str | None = Field(
        None, description="causal LMs: a folder holding the student's own tokenizer (one trained with `tokenizers` "
        "on the training text, a pretrained student's). The student then reads every text its own way and learns "
        "from the teacher through a loss that accepts another tokenizer (gold, uld; with ce), at the positions "
        "where both tokenizations start a token at the same character. init: config gives the student this "
        "vocabulary (embedding rows start from the teacher's rows of the same token, else the mean of its "
        "teacher pieces, with shrink_from_teacher)."
    )
    vocabulary: Literal["teacher", "trim"] = Field(
        "teacher", description="teacher: the teacher's whole vocabulary. trim: only the tokens the training text "
        "uses (and the special tokens), with a tokenizer that reads every training text as the teacher does; a "
        "held-out word with a token the training text never used is split into kept pieces or becomes the unknown "
        "token. Encoders with a WordPiece tokenizer (BERT family); the embedding table is most of a small encoder."
    )
    vocabulary_min_count: int = Field(
        1, ge=1, description="trim: keep a token only if the training text uses it at least this many times.")
    vocabulary_max_unknown: float = Field(
        0.02, ge=0, le=1, description="trim: refuse a trimmed vocabulary when more than this share of the held-out "
        "tokens (special tokens not counted) fall outside it.")

    @model_validator(mode="after")
    def _pretrained_needs_model(self) -> "StudentConfig":
        if self.init == "pretrained" and not self.model:
            raise ValueError("init: pretrained needs `model`: the student's folder")
        sizes = [k for k in ("hidden_size", "num_attention_heads", "intermediate_size") if getattr(self, k) is not None]
        if sizes and self.init in ("teacher_layers", "pretrained"):
            raise ValueError(f"student.{sizes[0]} sizes a student built with init: config or prune; init: {self.init} "
                             "keeps the sizes it copies: set init: prune (or config), or remove it")
        if self.init != "prune" and self.params is not None:
            raise ValueError("student.params is the budget of init: prune; set init: prune or give sizes")
        if self.init == "prune" and self.params is not None and self.intermediate_size is not None:
            raise ValueError("student.params and student.intermediate_size both size the FFN of a pruned student; "
                             "give one")
        if self.tokenizer and self.init in ("teacher_layers", "prune"):
            raise ValueError("student.tokenizer gives the student another vocabulary, which the teacher's copied "
                             "embedding table cannot read; use init: config (or pretrained)")
        return self


class LossConfig(BaseModel):
    """One weighted term of the distillation loss: a registered loss, its weight, and the parameters that
    loss declares (``temperature``, ``beta``, ``layer_map``, ``heads``, ...: ``kd-edge list losses``), each
    checked against that loss alone."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(description="A registered loss; `kd-edge list losses` shows each, what it reads and its "
                                  "parameters.")
    weight: float = Field(1.0, ge=0, description="Multiplier of this term in the total loss.")
    teacher: int | None = Field(
        None, description="Ensembles: only this teacher (0 = `teacher`, 1.. = ensemble.teachers); "
        "null follows ensemble.combine (intermediate losses use teacher 0).")

    @model_validator(mode="before")
    @classmethod
    def _own_params(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return data
        from kd_edge.distill import LOSSES
        from kd_edge.distill.params import validate_params
        from kd_edge.errors import ConfigError

        try:
            LOSSES.check(data["name"])
        except ConfigError as e:
            raise ValueError(str(e)) from None
        common = set(cls.model_fields)
        own = validate_params(data["name"], {k: v for k, v in data.items() if k not in common})
        return {**{k: v for k, v in data.items() if k in common}, **own}

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter the loss takes: what the recipe set over the loss's declared defaults."""
        from kd_edge.distill.params import with_defaults

        return with_defaults(self.name, dict(self.__pydantic_extra__ or {}))

    def param(self, key: str) -> Any:
        """One parameter (its default when the recipe did not set it; None when the loss has no such one)."""
        return self.params.get(key)


class AugmentConfig(BaseModel):
    """Teacher-labelled augmentation of the training text (encoders)."""

    model_config = _FROZEN

    copies: int = Field(1, ge=1, le=20, description="Augmented variants made from each training text.")
    mask_prob: float = Field(0.1, ge=0, le=1, description="Share of words replaced by the mask token.")
    replace_prob: float = Field(0.1, ge=0, le=1, description="Share of words replaced by a random word of the corpus.")
    delete_span_prob: float = Field(0.3, ge=0, le=1, description="Chance of deleting one span of 1-3 words.")


class GenerateConfig(BaseModel):
    """Sequence-level distillation (causal LM): the teacher continues prompts, the student learns them."""

    model_config = _FROZEN

    prompt_tokens: int = Field(8, ge=1, description="Tokens of each training text used as the prompt.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens the teacher generates per prompt.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_prompts: int | None = Field(None, gt=0, description="Use at most this many prompts.")
    keep_original: bool = Field(True, description="Also keep the original training texts.")


class RationaleConfig(BaseModel):
    """Rationale (chain-of-thought) distillation (causal LM): prompt -> rationale -> answer."""

    model_config = _FROZEN

    source: Literal["data", "teacher"] = Field(
        "data", description="data: rationale and answer come from the data's columns; teacher: the teacher "
        "generates them from the prompt with `template`.")
    prompt_field: str = Field("prompt", description="Column with the question / prompt.")
    rationale_field: str = Field("rationale", description="Column with the rationale (source: data).")
    answer_field: str = Field("answer", description="Column with the answer (source: data).")
    template: str = Field(
        "{prompt}\nLet's think step by step.\n", description="teacher: the text the teacher continues.")
    answer_marker: str = Field("Answer:", description="teacher: the marker that separates rationale and answer.")
    max_new_tokens: int = Field(64, ge=1, description="teacher: tokens generated per prompt.")
    rationale_weight: float = Field(1.0, ge=0, description="Loss weight of rationale tokens.")
    answer_weight: float = Field(1.0, ge=0, description="Loss weight of answer tokens.")


class OnPolicyConfig(BaseModel):
    """On-policy distillation (GKD): on a share of the steps the student continues the training prompts
    and the teacher scores its samples (distill/on_policy.py). Causal LMs, ``mode: live``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(0.5, gt=0, le=1, description="λ: the share of steps trained on the student's own samples.")
    prompt_tokens: int = Field(8, ge=1, description="Tokens of each training text kept as the prompt.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens the student samples per prompt (fewer at its end token).")
    temperature: float = Field(1.0, gt=0, description="The student's sampling temperature.")


class QuantizationAwareConfig(BaseModel):
    """Quantization-aware distillation: the last ``share`` of the steps train the student through fake-quantized
    linears, as its quantized file will compute (distill/qat.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(0.25, gt=0, le=1, description="The last share of the training steps that see the "
                         "quantized student.")
    bits: Literal[8, 4] = Field(8, description="8: ONNX Runtime's dynamic int8 (weights per channel, activations "
                                "per tensor); 4: 4-bit weights in blocks (onnx int4, GGUF Q4, GenAI int4), activations "
                                "in float.")
    block_size: int = Field(32, ge=8, description="bits 4: inputs per scale and zero point.")


class DistillConfig(BaseModel):
    """The training loop."""

    model_config = _FROZEN

    mode: Literal["offline", "live", "mutual"] = Field(
        "offline", description="offline: train on the cached teacher outputs; live: run the frozen teacher on "
        "every batch (needed for attention losses); mutual: train teacher and student together, each "
        "learning from the labels and from the other (Zhang et al. 2018).")
    teacher_lr: float | None = Field(None, gt=0, description="mutual: the teacher's learning rate (default lr / 10).")
    epochs: float = Field(3, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(32, gt=0, description="Examples per micro-batch (per process).")
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
    eval_every: int | None = Field(None, gt=0, description="Evaluate on a dev split every N steps.")
    dev_size: float = Field(0.1, gt=0, description="With eval_every: share (or count) of the train split held out as dev.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop when the dev metric has not improved for this many evaluations; "
        "the best student is kept.")
    checkpoint_every: int = Field(50, gt=0, description="Save a resumable checkpoint every N steps.")
    log_every: int = Field(10, gt=0, description="Append to train/metrics.jsonl every N steps.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Mixed precision where the hardware has it (Accelerate)."
    )
    cpu: bool = Field(False, description="Train on the CPU even when a GPU is present.")
    augment: AugmentConfig | None = Field(None, description="Encoders: teacher-labelled augmented text.")
    generate: GenerateConfig | None = Field(None, description="Causal LM: sequence-level distillation.")
    rationale: RationaleConfig | None = Field(None, description="Causal LM: rationale distillation.")
    on_policy: OnPolicyConfig | None = Field(
        None, description="Causal LM: on-policy distillation (GKD); needs mode: live. Pair it with the jsd loss "
        "(beta) for GKD's generalised JSD.")
    quantization_aware: QuantizationAwareConfig | None = Field(
        None, description="Train the last part of the steps through fake-quantized linears (int8 as ONNX Runtime's "
        "dynamic int8, or 4-bit weights), so that the quantized file keeps the fp32 student's quality; "
        "e.g. {share: 0.25, bits: 8}.")
    baseline: bool | None = Field(
        None, description="Also train the same student without the teacher (the next-token loss only, on the same "
        "data, steps and seed) and report it beside the distilled one: what the teacher bought. Default: on for "
        "causal LMs (it doubles the training time), off for encoders, whose data has no targets without a teacher.")

    @field_validator("losses")
    @classmethod
    def _some_loss(cls, v: list[LossConfig]) -> list[LossConfig]:
        if not v:
            raise ValueError("needs at least one loss term")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DistillConfig":
        if self.early_stopping_patience and not self.eval_every:
            raise ValueError("early_stopping_patience needs eval_every (how often to evaluate on the dev split)")
        if self.generate and self.rationale:
            raise ValueError("generate (sequence-level) and rationale distillation are separate recipes; pick one")
        if self.on_policy and self.mode != "live":
            raise ValueError("on_policy needs the teacher to score the student's own samples as they are made: set "
                             "distill.mode: live (a cache holds the teacher's outputs on fixed text only)")
        return self
