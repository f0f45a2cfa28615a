"""Sentence-embedding task: an encoder whose token states are pooled into one vector per text.

Distilled outputs: the pooled embedding and chosen hidden states. Metrics (kd_edge.tasks.embedding_metrics):
cosine to the teacher, top-k neighbour agreement, and a logistic-regression probe on labelled text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kd_edge.data.packed import Packed, length_batches, pad
from kd_edge.errors import ArtifactError


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    """Pool token states [B, T, H] over real tokens (mask [B, T]) into [B, H]."""
    if mode == "cls":
        out = hidden[:, 0]
    elif mode == "max":
        out = hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(out, dim=-1) if normalize else out


class EmbeddingModule(nn.Module):
    """(input_ids, attention_mask) -> sentence_embedding: the exact function that gets exported."""

    def __init__(self, backbone: nn.Module, pooling: str, normalize: bool):
        super().__init__()
        self.backbone, self.pooling, self.normalize = backbone, pooling, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling, self.normalize)


class SentenceEmbeddingTask:
    """Adapter for `task: sentence_embedding`."""

    name = "sentence_embedding"
    input_names = ("input_ids", "attention_mask")
    output_name = "sentence_embedding"
    metric_name = "probe_accuracy"

    def load_model(self, model_dir: Path, *, trust_remote_code: bool = False, eager: bool = False) -> nn.Module:
        """Load the encoder (AutoModel) in eval mode; ``eager`` picks plain attention for export."""
        from transformers import AutoModel

        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if eager:
            # Eager attention exports to a graph ONNX Runtime's transformer optimiser recognises
            # (SDPA exports fine too, but its int8 graph measured ~15 % slower here).
            kwargs["attn_implementation"] = "eager"
        try:
            return AutoModel.from_pretrained(str(model_dir), **kwargs).eval()
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot load a model from '{model_dir}' ({str(e).splitlines()[0]}); "
                                "check that it is a transformers save_pretrained folder") from e

    def load_tokenizer(self, model_dir: Path, *, trust_remote_code: bool = False):
        """Load the tokenizer saved beside the model."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"no usable tokenizer in '{model_dir}' ({str(e).splitlines()[0]}); "
                                "save the tokenizer next to the model") from e

    def forward(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                pooling: str, normalize: bool, hidden_layers: tuple[int, ...] = ()) -> dict[str, Any]:
        """Run the encoder; return the pooled embedding and the requested hidden states (index 0 =
        embedding output, i = output of layer i)."""
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=bool(hidden_layers))
        result: dict[str, Any] = {"pooled": pool(out.last_hidden_state, attention_mask, pooling, normalize)}
        if hidden_layers:
            result["hidden"] = {i: out.hidden_states[i] for i in hidden_layers}
        return result

    @torch.no_grad()
    def embed(self, model: nn.Module, ids: Packed, *, pad_id: int, batch_size: int, pooling: str, normalize: bool,
              hidden_layers: tuple[int, ...] = (), desc: str = "", progress: bool = True):
        """Pooled embeddings [N, H] (fp32) of every sequence and, per requested layer, its hidden
        states packed like ``ids`` (fp16). Batches group similar lengths to waste little on padding."""
        from tqdm.auto import tqdm

        model.eval()
        pooled: np.ndarray | None = None
        hidden: dict[int, np.ndarray] = {}
        lengths = ids.lengths()
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for idx in tqdm(length_batches(lengths, batch_size), desc=desc, unit="batch",
                        disable=not progress or None, leave=False):
            arr, mask = pad([ids[i] for i in idx], pad_id)
            out = self.forward(model, torch.from_numpy(arr.astype(np.int64)), torch.from_numpy(mask),
                               pooling=pooling, normalize=normalize, hidden_layers=hidden_layers)
            p = out["pooled"].float().numpy()
            if pooled is None:
                pooled = np.zeros((len(ids), p.shape[1]), np.float32)
            pooled[idx] = p
            for layer, h in out.get("hidden", {}).items():
                if layer not in hidden:
                    hidden[layer] = np.zeros((int(offsets[-1]), h.shape[-1]), np.float16)
                h16 = h.to(torch.float16).numpy()
                for row, i in enumerate(idx):
                    hidden[layer][offsets[i]:offsets[i + 1]] = h16[row, :lengths[i]]
        return pooled, {k: Packed(v, offsets) for k, v in hidden.items()}

    def export_module(self, model: nn.Module, *, pooling: str, normalize: bool) -> nn.Module:
        """The module whose (input_ids, attention_mask) -> embedding function is exported."""
        return EmbeddingModule(model, pooling, normalize).eval()
