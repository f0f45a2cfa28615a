"""Causal language modelling: next-token logits. The teacher cache keeps, per position, the top-k
logits with their indices and the log-normaliser at each loss temperature, so the loss can rebuild
the teacher's distribution as the top-k probabilities plus one bucket for the remaining mass.
Metric: perplexity on held-out text (lower is better), top-1 agreement with the teacher."""

from __future__ import annotations

import functools
import math

from typing import Any

import numpy as np
import torch
from torch import nn

from transformers.cache_utils import Cache

from kd_edge.data.packed import Packed, pad
from kd_edge.tasks.base import Batch, CacheSpec, Task
from kd_edge.tasks.kinds import CURVE_DEGREE, CURVE_EXACT, KINDS

DEFAULT_TOP_K = 64
# What the teacher cache keeps per token of a causal LM: the top-k log-probabilities (fp16: within 0.008
# nats down to -16; KL from the fp32 values 1e-6 nats on the SmolLM2 teacher's cache) and their ids (uint16
# for vocabularies up to 65,536, else int32), the log-normaliser per temperature (fp32) and, on the held-out
# split, the target's log-prob (fp32). At k = 64: 2 x 64 x 2 + 4 x temperatures bytes, 260-264 on the
# training split; the fp32 logits and int32 ids before took 512 + the same.
# With teacher.cache_values: curve, the values are the CURVE_EXACT largest in fp16 and CURVE_DEGREE + 1 fp16
# Legendre coefficients in log rank for the rest (DistillKit compresses top-k log-probs the same way):
# 2 x 64 + 2 x 4 + 2 x 5 + 4 = 150 bytes at k = 64.
CACHE_LAYOUT = "top-k log-probs fp16 + ids uint16 (int32 past 65,536 tokens) + log-normalisers and target log-prob fp32"


@functools.lru_cache(maxsize=8)
def curve_basis(k: int, exact: int, degree: int) -> torch.Tensor:
    """[k - exact, degree + 1]: the Legendre polynomials at the log ranks exact..k-1, mapped onto [-1, 1]:
    the basis a curve-kept top-k is fitted in (least squares) and read back from."""
    from numpy.polynomial import legendre

    u = np.log(np.arange(exact, k) + 1.0)
    x = 2 * (u - u[0]) / (u[-1] - u[0]) - 1
    return torch.from_numpy(legendre.legvander(x, degree))


def curve_fit(logprobs: torch.Tensor, exact: int, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the ``exact`` largest log-probs, the coefficients of the rest) of sorted top-k log-probs [..., k], fp16."""
    basis = curve_basis(logprobs.shape[-1], exact, degree)
    coefficients = logprobs[..., exact:].double() @ torch.linalg.pinv(basis).T
    return logprobs[..., :exact].half(), coefficients.half()


def curve_values(head: torch.Tensor, coefficients: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k log-probs [..., k] a curve keeps (``curve_fit``'s inverse, up to the fit)."""
    basis = curve_basis(k, head.shape[-1], coefficients.shape[-1] - 1).float()
    return torch.cat([head.float(), coefficients.float() @ basis.T], -1)


def lse_key(temperature: float) -> str:
    """Cache field name of the log-normaliser at a temperature."""
    return f"lse_t{temperature:g}"


class CausalLMLogitsModule(nn.Module):
    """(input_ids, attention_mask) -> logits [B, T, V], no KV cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class CausalLMKVModule(nn.Module):
    """One decoding step with a KV cache, for export:
    (input_ids [B,T], attention_mask [B,P+T], position_ids [B,T], past key/value per layer [B,H,P,D])
    -> (logits [B,T,V], present key/value per layer [B,H,P+T,D]).
    The prompt runs with P = 0 (empty past), then one token per step with the presents fed back."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self.layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers[:self.layers]:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)

    def static_step(self, size: int, write: str = "dynamic_update_slice") -> "CausalLMStaticStep":
        """The same model as one step over fixed-size KV buffers of ``size`` positions (TFLite; ExecuTorch
        with ``write="index_copy"``)."""
        return CausalLMStaticStep(self.model, size, write).eval()

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def onnx_io(self) -> dict:
        """What the ONNX exporter needs: sample arguments, names and dynamic axes."""
        b, t, p = 1, 4, 3
        past = self.past_names()
        present = [n.replace("past_key_values", "present") for n in past]
        dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
                   "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"},
                   **{n: {0: "batch", 2: "past_sequence"} for n in past},
                   **{n: {0: "batch", 2: "total_sequence"} for n in present}}
        args = (torch.ones(b, t, dtype=torch.int64), torch.ones(b, p + t, dtype=torch.int64),
                torch.arange(p, p + t).unsqueeze(0),
                *[torch.zeros(b, self.kv_heads, p, self.head_dim) for _ in past])
        kv = ["batch", self.kv_heads, "past_sequence", self.head_dim]
        return {"args": args, "input_names": ["input_ids", "attention_mask", "position_ids", *past],
                "output_names": ["logits", *present], "dynamic_axes": dynamic,
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                           {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total_sequence"]},
                           {"name": "position_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                           *[{"name": n, "dtype": "float32", "shape": kv} for n in past]],
                "kv_cache": {"layers": self.layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim}}


class _BufferCache(Cache):
    """A transformers Cache over fixed-size key/value buffers given as tensors: ``update`` writes the
    new positions and returns the whole buffer, with no in-place mutation. The positions of one call
    are consecutive (a prompt from 0, or one token), so the write is one dynamic_update_slice at the
    first of them: as a TFLite op it costs a copy, where index_copy becomes a StableHLO scatter that
    made a 128-token prefill of the 6-layer SmolLM2 student 1.5x slower (141 vs 96 ms here)."""

    def __init__(self, keys, values, positions, size: int, layers: int, write: str = "dynamic_update_slice"):  # noqa: no Cache.__init__
        self.keys, self.values, self.size, self.n_layers = list(keys), list(values), size, layers
        self.layers, self.write, self.positions = [], write, positions
        zero = torch.zeros([], dtype=torch.int32)
        self.start = [zero, zero, positions.int()[0].reshape([]), zero]  # buffers are [batch, heads, position, dim]

    def _write(self, buffer, new):
        if self.write == "index_copy":  # ExecuTorch: a plain aten op its kernels have
            return buffer.index_copy(2, self.positions, new)
        from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

        return dynamic_update_slice(buffer, new, self.start)

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None, **_):
        self.keys[layer_idx] = self._write(self.keys[layer_idx], key_states)
        self.values[layer_idx] = self._write(self.values[layer_idx], value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, cache_position, layer_idx: int = 0):
        return self.size, 0

    @property
    def is_compileable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.n_layers


GROUPED_ATTENTION = "kd_edge_grouped"


def grouped_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **_):
    """transformers' eager attention for grouped key/value heads without copying them per query
    head: the query heads of a group attend together as one longer query ([B, KV, G*T, D]).
    transformers' own repeat_kv becomes BROADCAST_TO and TRANSPOSE over the whole key/value buffer
    in TFLite, which made the SmolLM2 student's decode step scale with the buffer (31 ms at 256
    positions here, 9.4 ms without it); the arithmetic is the same (identical logits in PyTorch)."""
    b, h, t, d = query.shape
    kv_heads, s = key.shape[1], key.shape[2]
    groups = h // kv_heads
    weights = torch.matmul(query.reshape(b, kv_heads, groups * t, d), key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = (weights.view(b, kv_heads, groups, t, s) + attention_mask[:, :, None, :, :s]).view(b, kv_heads, -1, s)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).view(b, h, t, d)
    return out.transpose(1, 2).contiguous(), None


class CausalLMStaticStep(nn.Module):
    """One step over fixed-size KV buffers, for formats with fixed shapes (TFLite):
    (tokens [1,T] int32, input_pos [T] int32, key/value buffer per layer [1,H,S,D])
    -> (logits [1,T,V], the buffers with positions ``input_pos`` written).
    A query at position p sees buffer positions <= p, so whatever a padded prefill wrote past the
    prompt is never read: decoding overwrites it first."""

    def __init__(self, model: nn.Module, size: int, write: str = "dynamic_update_slice"):
        super().__init__()
        self.model, self.size, self.write = model, size, write
        cfg = model.config
        self.layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # grouped_attention is plain attention: models that soft-cap their scores keep their own
        self.attention = cfg._attn_implementation if getattr(cfg, "attn_logit_softcapping", None) else GROUPED_ATTENTION
        if self.attention == GROUPED_ATTENTION:
            from transformers import AttentionInterface

            AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)

    def forward(self, tokens, input_pos, *kv):
        t = tokens.shape[1]
        cache = _BufferCache(kv[0::2], kv[1::2], input_pos.long(), self.size, self.layers, self.write)
        keys = torch.arange(self.size).view(1, 1, 1, self.size)
        mask = torch.where(keys <= input_pos.long().view(1, 1, t, 1), 0.0, torch.finfo(torch.float32).min)
        cfg = self.model.config
        before, cfg._attn_implementation = cfg._attn_implementation, self.attention
        try:
            out = self.model(input_ids=tokens.long(), position_ids=input_pos.long().unsqueeze(0),
                             past_key_values=cache, attention_mask=mask, use_cache=True,
                             cache_position=input_pos.long())
        finally:
            cfg._attn_implementation = before
        result = [out.logits]
        for i in range(self.layers):
            result += [cache.keys[i], cache.values[i]]
        return tuple(result)

    def tflite_signatures(self, prefill: list[int]) -> list[tuple[str, tuple]]:
        """(name, sample args) of each signature: ``prefill_<T>`` per length, then ``decode``."""
        kv = [torch.zeros(1, self.kv_heads, self.size, self.head_dim) for _ in range(2 * self.layers)]
        sigs = [(f"prefill_{t}", (torch.zeros(1, t, dtype=torch.int32), torch.arange(t, dtype=torch.int32), *kv))
                for t in prefill]
        sigs.append(("decode", (torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), *kv)))
        return sigs

    def kv_cache(self) -> dict:
        return {"layers": self.layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim, "size": self.size}


class CausalLMTask(Task):
    """Adapter for `task: causal_lm`."""

    kind = KINDS["causal_lm"]

    def make_batch(self, ids: Packed, idx: np.ndarray, pad_id: int, labels: np.ndarray | None = None,
                   weights: Packed | None = None) -> Batch:
        """Adds ``labels`` (the next token, -100 where none) and ``token_weights``: the weight of the
        prediction made at each position (0 for padding and the last position; ``weights`` of the
        predicted token when given, e.g. 0 for a prompt, the rationale weight for a rationale)."""
        batch = super().make_batch(ids, idx, pad_id)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        nxt = torch.full_like(input_ids, -100)
        nxt[:, :-1] = torch.where(mask[:, 1:].bool(), input_ids[:, 1:], torch.full_like(input_ids[:, 1:], -100))
        w = torch.zeros(input_ids.shape, dtype=torch.float32)
        if weights is not None:
            per_token, _ = pad([np.asarray(weights[i], np.float32) for i in idx], 0.0)
            w[:, :-1] = torch.from_numpy(per_token[:, 1:]) * mask[:, 1:]
        else:
            w[:, :-1] = mask[:, 1:].float()
        batch.tensors.update({"labels": nxt, "token_weights": w})
        return batch

    def forward(self, model: nn.Module, batch: Batch, *, meta: dict, hidden_layers: tuple[int, ...] = (),
                attentions: bool = False) -> dict[str, Any]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                    output_hidden_states=bool(hidden_layers), output_attentions=attentions)
        return {"logits": out.logits, **self.hidden_outputs(out, hidden_layers, attentions)}

    def cache_outputs(self, out: dict[str, Any], batch: Batch, spec: CacheSpec) -> dict[str, tuple[str, torch.Tensor]]:
        logits = out["logits"].float()
        k = min(spec.top_k or DEFAULT_TOP_K, logits.shape[-1])
        values, indices = logits.topk(k, dim=-1)
        labels = batch["labels"]
        lse = {t: torch.logsumexp(logits / t, -1) for t in {1.0, *spec.temperatures}}
        logp = (logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) - lse[1.0])
        # the lean layout (see CACHE_LAYOUT): log-probs in fp16 or as a curve, ids in 16 bits when the vocabulary allows
        ids = indices.to(torch.uint16) if logits.shape[-1] <= 1 << 16 else indices.int()
        logprobs = values - lse[1.0].unsqueeze(-1)
        fields = {"topk_indices": ("token", ids)}
        if spec.values == "curve":
            head, coefficients = curve_fit(logprobs, CURVE_EXACT, CURVE_DEGREE)
            fields.update({"topk_head": ("token", head), "topk_curve": ("token", coefficients)})
        else:
            fields["topk_logprobs"] = ("token", logprobs.half())
        if spec.target:
            fields["target_logprob"] = ("token", torch.where(labels >= 0, logp, torch.zeros_like(logp)))
        for t in sorted({1.0, *spec.temperatures}):
            fields[lse_key(t)] = ("token", lse[t])
        for layer, h in out.get("hidden", {}).items():
            fields[f"hidden_{layer}"] = ("token", h.half())
        return fields

    def dev_score(self, out, batch, teacher) -> tuple[float, float]:
        """Summed negative log-likelihood of the weighted next tokens (perplexity once averaged)."""
        nll = nn.functional.cross_entropy(out["logits"].float().transpose(1, 2), batch["labels"].clamp(min=0),
                                          reduction="none")
        w = (batch["token_weights"] > 0).float()
        return float((nll * w).sum()), float(w.sum())

    def dev_value(self, mean: float) -> float:
        return math.exp(mean)

    def teacher_targets(self, cached: dict[str, torch.Tensor]) -> dict[str, Any]:
        cached = dict(cached)
        if "topk_curve" in cached:  # a curve-kept top-k back to its log-probs
            cached["topk_logprobs"] = curve_values(cached.pop("topk_head"), cached.pop("topk_curve"),
                                                   cached["topk_indices"].shape[-1])
        if "topk_logprobs" in cached:  # the cache's layout back to what the losses read: logits, int64 ids
            cached["topk_logits"] = cached.pop("topk_logprobs").float() + cached["lse_t1"].float().unsqueeze(-1)
        if "topk_indices" in cached:
            cached["topk_indices"] = cached["topk_indices"].long()
        out = super().teacher_targets({k: v for k, v in cached.items() if not k.startswith("lse_t")})
        out["lse"] = {float(k.removeprefix("lse_t")): v for k, v in cached.items() if k.startswith("lse_t")}
        return out

    def export_module(self, model: nn.Module, meta: dict) -> nn.Module:
        """The KV-cache step module: exported files generate token by token."""
        return CausalLMKVModule(model).eval()
