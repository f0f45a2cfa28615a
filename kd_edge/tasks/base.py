"""What every task adapter shares: finding and loading models, batching packed token ids, and the
outputs a task caches for the teacher.

A task adapter says which Auto class loads the model, what its forward pass returns for the losses
(``pooled``, ``logits``, ``hidden``, ``attentions``), which teacher outputs are cached, how teacher and
student are measured, and which module is exported.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from kd_edge.data.packed import Packed, length_batches, pad
from kd_edge.errors import ArtifactError
from kd_edge.tasks.kinds import CacheSpec, ModelSource, TaskKind  # noqa: F401 (re-exported)


@dataclass
class Batch:
    """Padded tensors for a set of examples, plus the example indices."""

    idx: np.ndarray
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device) -> "Batch":
        return Batch(self.idx, {k: v.to(device) for k, v in self.tensors.items()})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def get(self, key: str, default=None):
        return self.tensors.get(key, default)


def _plain_from_gguf(model: nn.Module) -> nn.Module:
    """A GGUF-loaded model as an ordinary one: save_pretrained refuses models that carry a GGUF
    quantization config, so rebuild the same class from a clean config and copy the weights."""
    config = model.config
    if getattr(config, "quantization_config", None) is None:
        return model
    clean = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    plain = type(model)(clean)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if [k for k in missing if "rotary" not in k] or unexpected:
        raise ArtifactError(f"converting the GGUF model to a plain {type(model).__name__} lost weights "
                            f"({missing[:3]}, {unexpected[:3]})")
    return plain.eval()


class Task(abc.ABC):
    """Base of the task adapters."""

    kind: TaskKind  # the torch-free half: names, metrics, what the task's outputs are
    input_names = ("input_ids", "attention_mask")

    name = property(lambda self: self.kind.name)
    auto_class = property(lambda self: self.kind.auto_class)
    output_name = property(lambda self: self.kind.output_name)
    quality_metric = property(lambda self: self.kind.quality_metric)
    higher_is_better = property(lambda self: self.kind.higher_is_better)
    label_kind = property(lambda self: self.kind.label_kind)

    # -- loading -----------------------------------------------------------------------------------
    def load_model(self, source: ModelSource | Path, *, eager: bool = False) -> nn.Module:
        """Load the model in eval mode; ``eager`` picks plain attention (export, attention maps)."""
        import transformers

        source = source if isinstance(source, ModelSource) else ModelSource(Path(source))
        cls = getattr(transformers, self.auto_class)
        kwargs: dict[str, Any] = {"trust_remote_code": source.trust_remote_code}
        if source.gguf_file:
            kwargs["gguf_file"] = source.gguf_file
        else:
            from kd_edge.tasks.hub import check_weights

            check_weights(source.path, allow_pickle=source.allow_pickle, what="model",
                          key="teacher.allow_pickle (or student.allow_pickle) in a recipe, or pass --allow-pickle to "
                              "kd-edge export")
            kwargs["use_safetensors"] = None if source.allow_pickle else True  # never unpickle unless asked
        if eager:
            # Eager attention exports to a graph ONNX Runtime's transformer optimiser recognises
            # and returns attention maps; SDPA returns none.
            kwargs["attn_implementation"] = "eager"
        try:
            model = cls.from_pretrained(str(source.path), **kwargs).eval()
        except Exception as e:  # a model folder is user input: any failure to read it is a bad input
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ArtifactError(f"cannot load a {self.auto_class} from '{source.path}' ({type(e).__name__}: "
                                f"{first}); check that it is a complete transformers model folder for task "
                                f"{self.name} (save_pretrained writes one)") from e
        return _plain_from_gguf(model) if source.gguf_file else model

    def load_tokenizer(self, source: ModelSource | Path):
        """Load the tokenizer saved beside the model; give it a pad token if it has none."""
        from transformers import AutoTokenizer

        source = source if isinstance(source, ModelSource) else ModelSource(Path(source))
        kwargs: dict[str, Any] = {"trust_remote_code": source.trust_remote_code}
        if source.gguf_file:
            kwargs["gguf_file"] = source.gguf_file
        try:
            tok = AutoTokenizer.from_pretrained(str(source.path), **kwargs)
        except Exception as e:  # a tokenizer folder is user input
            raise ArtifactError(f"no usable tokenizer in '{source.path}' ({str(e).splitlines()[0][:200]}); "
                                "save the tokenizer next to the model") from e
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        return tok

    # -- batching ----------------------------------------------------------------------------------
    def make_batch(self, ids: Packed, idx: np.ndarray, pad_id: int, labels: np.ndarray | None = None,
                   weights: Packed | None = None) -> Batch:
        """Padded ``input_ids`` and ``attention_mask`` (and labels) for examples ``idx``."""
        arr, mask = pad([ids[i] for i in idx], pad_id)
        batch = Batch(np.asarray(idx), {"input_ids": torch.from_numpy(arr.astype(np.int64)),
                                        "attention_mask": torch.from_numpy(mask)})
        if labels is not None and self.label_kind == "class":
            batch.tensors["labels"] = torch.from_numpy(np.asarray(labels)[idx].astype(np.int64))
        return batch

    def batches(self, ids: Packed, batch_size: int, pad_id: int, *, desc: str = "",
                progress: bool = True) -> Iterator[Batch]:
        """Length-sorted batches over every sequence (little padding), with a progress bar."""
        from kd_edge.progress import Progress

        for idx in Progress(length_batches(ids.lengths(), batch_size), desc=desc, unit="batch",
                            enabled=progress, leave=False):
            yield self.make_batch(ids, idx, pad_id)

    # -- to be provided by each task -----------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, model: nn.Module, batch: Batch, *, meta: dict, hidden_layers: tuple[int, ...] = (),
                attentions: bool = False) -> dict[str, Any]:
        """Run the model on a batch; return what the losses read (pooled / logits, hidden, attentions)."""

    @abc.abstractmethod
    def cache_outputs(self, out: dict[str, Any], batch: Batch, spec: CacheSpec) -> dict[str, tuple[str, torch.Tensor]]:
        """Per batch: name -> (``"example"`` or ``"token"``, tensor) to store in the teacher cache."""

    @abc.abstractmethod
    def export_module(self, model: nn.Module, meta: dict) -> nn.Module:
        """The module whose (input_ids, attention_mask) -> output function is exported."""

    @abc.abstractmethod
    def dev_score(self, out: dict[str, Any], batch: Batch, teacher: Callable[[], torch.Tensor]) -> tuple[float, float]:
        """(sum, weight) of this batch's dev metric; ``teacher()`` gives the teacher's output field when
        the metric compares with it. ``dev_value`` turns the totals into the metric."""

    def save_for_libraries(self, folder: Path, model: nn.Module, meta: dict) -> None:
        """Beside save_pretrained in a student folder: what other libraries need to load it as it is
        used (sentence-transformers' modules and pooling for an embedder). Nothing by default."""

    def dev_value(self, mean: float) -> float:
        """The dev metric from the weighted mean of ``dev_score``."""
        return mean

    def teacher_targets(self, cached: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The teacher's outputs, for the losses, from a batch of cached fields."""
        out: dict[str, Any] = {k: v for k, v in cached.items() if not k.startswith("hidden_")}
        hidden = {int(k.split("_")[1]): v for k, v in cached.items() if k.startswith("hidden_")}
        if hidden:
            out["hidden"] = hidden
        return out

    @staticmethod
    def hidden_outputs(out, hidden_layers: tuple[int, ...], attentions: bool) -> dict[str, Any]:
        """The hidden states and attention maps a forward pass returned, keyed by layer."""
        result: dict[str, Any] = {}
        if hidden_layers:
            result["hidden"] = {i: out.hidden_states[i] for i in hidden_layers}
        if attentions:
            if out.attentions is None or out.attentions[0] is None:
                raise ArtifactError("the model returned no attention maps; attention losses need eager attention")
            result["attentions"] = {i + 1: a for i, a in enumerate(out.attentions)}
        return result
