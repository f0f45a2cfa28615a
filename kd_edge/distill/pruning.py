"""``student.init: prune``: a student cut from the teacher by how much each part of it is used.

Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation")
scores every prunable part from the teacher's activations on a small calibration set and keeps the
largest, then distills: it beats dropping whole layers at equal size. Here, on ``student.prune_samples``
training texts:

- an FFN neuron's importance is the mean |activation| entering the FFN's output projection;
- an attention head's, the mean L2 norm of its output entering the attention's output projection;
- a hidden channel's, the mean |value| of the layer norms' outputs, summed over every norm of the model;
- a layer's, its block importance (ShortGPT, Men et al. 2024): 1 - cos(input, output) of its hidden
  states, averaged over tokens. ``student.layers: n`` keeps the n layers of highest importance, in order.

Pads are left out of every mean. Layers and FFN neurons are pruned in BERT-family encoders and
Llama-family decoders (Llama, Mistral, Qwen2, SmolLM2); heads and hidden channels in the decoders only
(a BERT attention's head size is its width over its head count, so a BERT config cannot hold fewer heads
of the teacher's size, and a sentence embedding keeps the teacher's width).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from kd_edge.errors import ConfigError


@dataclass(frozen=True)
class Family:
    """Where a family's prunable parts live, relative to one transformer layer."""

    name: str
    ffn_in: tuple[str, ...]  # linears whose output rows are FFN neurons
    ffn_out: str  # the linear whose input columns are FFN neurons
    attn_in: tuple[str, ...]  # q, k, v
    attn_out: str
    heads: bool  # query heads and hidden channels can be pruned
    norms: tuple[str, ...] = ()  # per-layer norms (hidden-channel importance, sliced with the width)


BERT = Family("bert", ("intermediate.dense",), "output.dense",
              ("attention.self.query", "attention.self.key", "attention.self.value"), "attention.output.dense",
              heads=False, norms=("attention.output.LayerNorm", "output.LayerNorm"))
LLAMA = Family("llama", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj",
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj",
               heads=True, norms=("input_layernorm", "post_attention_layernorm"))
FAMILIES = {"bert": BERT, "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA}


def family_of(config) -> Family:
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise ConfigError(f"student.init: prune knows the {', '.join(sorted(FAMILIES))} architectures; the teacher is "
                          f"{kind}: use init: teacher_layers or config")
    return FAMILIES[kind]


def check_sizes(s, teacher: dict) -> None:
    """Refuse prune targets the teacher cannot be cut to (preflight: ``teacher`` is its config.json)."""
    fam = FAMILIES.get(teacher.get("model_type"))
    if fam is None:
        raise ConfigError(f"student.init: prune knows the {', '.join(sorted(FAMILIES))} architectures; the teacher is "
                          f"{teacher.get('model_type')}: use init: teacher_layers or config")
    for key, have in (("intermediate_size", teacher.get("intermediate_size")),
                      ("num_attention_heads", teacher.get("num_attention_heads")),
                      ("hidden_size", teacher.get("hidden_size"))):
        want = getattr(s, key)
        if want is not None and have is not None and want > have:
            raise ConfigError(f"student.{key}={want} is larger than the teacher's ({have}); pruning only removes: "
                              f"choose at most {have}")
    if not fam.heads and (s.num_attention_heads not in (None, teacher.get("num_attention_heads"))
                          or s.hidden_size not in (None, teacher.get("hidden_size"))):
        raise ConfigError(f"student.init: prune cuts a {fam.name} model's layers and FFN neurons "
                          "(student.layers, intermediate_size, params); its heads and width stay the teacher's: "
                          "remove num_attention_heads / hidden_size")
    heads, kv = s.num_attention_heads, teacher.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise ConfigError(f"student.num_attention_heads={heads}: the teacher's query heads share {kv} key/value "
                          f"heads, so prune keeps the same number in each group; choose a multiple of {kv}")


def _layers(model):
    from kd_edge.distill.layers import find_layer_list

    parent, attr = find_layer_list(model, model.config.num_hidden_layers)
    return getattr(parent, attr)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@dataclass
class Importance:
    """Per-part scores measured on the teacher."""

    layers: np.ndarray  # [L]
    neurons: np.ndarray  # [L, I]
    heads: np.ndarray | None  # [L, H]
    channels: np.ndarray | None  # [hidden]
    tokens: int


def measure(model, batches, fam: Family) -> Importance:
    """Run ``model`` (the teacher) over ``batches`` of (input_ids, attention_mask) and score its parts."""
    import torch

    layers = _layers(model)
    n, inter = len(layers), model.config.intermediate_size
    heads, hd = model.config.num_attention_heads, _head_dim(model.config)
    sums = {"neurons": torch.zeros(n, inter, dtype=torch.float64), "heads": torch.zeros(n, heads, dtype=torch.float64),
            "channels": torch.zeros(model.config.hidden_size, dtype=torch.float64),
            "layers": torch.zeros(n, dtype=torch.float64)}
    mask: dict[str, torch.Tensor] = {}

    def masked(x):
        return x * mask["m"].to(x.dtype).unsqueeze(-1)

    hooks = []
    for i, layer in enumerate(layers):
        def ffn_hook(_m, args, i=i):
            sums["neurons"][i] += masked(args[0].abs()).sum((0, 1)).double()

        def head_hook(_m, args, i=i):
            x = args[0]
            per_head = x.reshape(*x.shape[:-1], -1, hd).norm(dim=-1)
            sums["heads"][i] += masked(per_head).sum((0, 1)).double()

        def norm_hook(_m, _args, out):
            sums["channels"].add_(masked(out.abs()).sum((0, 1)).double())

        def block_hook(_m, args, kwargs, out, i=i):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            m = mask["m"].bool()
            cos = torch.nn.functional.cosine_similarity(x[m].double(), y[m].double(), dim=-1)
            sums["layers"][i] += (1 - cos).sum()

        hooks.append(layer.register_forward_hook(block_hook, with_kwargs=True))
        hooks.append(layer.get_submodule(fam.ffn_out).register_forward_pre_hook(ffn_hook))
        hooks.append(layer.get_submodule(fam.attn_out).register_forward_pre_hook(head_hook))
        for norm in fam.norms:
            hooks.append(layer.get_submodule(norm).register_forward_hook(norm_hook))
    tokens = 0
    try:
        with torch.no_grad():
            for input_ids, attention_mask in batches:
                mask["m"] = attention_mask
                model(input_ids=input_ids, attention_mask=attention_mask)
                tokens += int(attention_mask.sum())
    finally:
        for h in hooks:
            h.remove()
    t = max(tokens, 1)
    return Importance(layers=(sums["layers"] / t).numpy(), neurons=(sums["neurons"] / t).numpy(),
                      heads=(sums["heads"] / t).numpy() if fam.heads else None,
                      channels=(sums["channels"] / t).numpy() if fam.heads else None, tokens=tokens)


def pick_layers_by_importance(scores: np.ndarray, n: int) -> list[int]:
    """The ``n`` layers of highest block importance, in the teacher's order."""
    return sorted(int(i) for i in np.argsort(-scores, kind="stable")[:n])


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def _cut(linear, rows=None, cols=None):
    """A copy of ``linear`` keeping output ``rows`` and input ``cols`` (index tensors)."""
    import torch
    from torch import nn

    w = linear.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach()[rows] if rows is not None else linear.bias.detach())
    return new


def _set(layer, path: str, module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, attr, module)


def ffn_size_for(model, layers: int, target_params: int, fam: Family) -> int:
    """The FFN width (a multiple of 8) that brings a student of ``layers`` of ``model``'s layers to at most
    ``target_params`` parameters."""
    total = sum(p.numel() for p in model.parameters())
    stack = _layers(model)
    inter = model.config.intermediate_size
    per_layer = sum(p.numel() for p in stack[0].parameters())
    ffn = sum(p.numel() for name in (*fam.ffn_in, fam.ffn_out) for p in stack[0].get_submodule(name).parameters())
    out_bias = stack[0].get_submodule(fam.ffn_out).bias
    per_neuron = (ffn - (out_bias.numel() if out_bias is not None else 0)) / inter
    fixed = total - len(stack) * per_layer + layers * (per_layer - per_neuron * inter)
    width = int((target_params - fixed) // (layers * per_neuron)) // 8 * 8
    if width < 8:
        raise ConfigError(f"student.params={target_params:,} is below what {layers} layers of the teacher need without "
                          f"their FFN ({int(fixed):,}); keep fewer layers or give a larger target")
    if width >= inter:
        raise ConfigError(f"student.params={target_params:,} is at least what {layers} whole teacher layers come to "
                          f"({int(fixed + layers * per_neuron * inter):,}); nothing to prune: lower the target or keep "
                          "more layers out")
    return width


def prune(teacher, s, importance: Importance) -> tuple[object, dict]:
    """A copy of ``teacher`` cut to the student config ``s`` (layers, intermediate_size, num_attention_heads,
    hidden_size, params) by ``importance``; notes on what was kept."""
    import torch
    from torch import nn

    from kd_edge.distill.layers import keep_layers

    fam = family_of(teacher.config)
    n_teacher = teacher.config.num_hidden_layers
    layer_pick = (pick_layers_by_importance(importance.layers, s.layers) if isinstance(s.layers, int)
                  else list(s.layers))
    student = keep_layers(teacher, layer_pick)
    inter = s.intermediate_size or teacher.config.intermediate_size
    if s.params:
        inter = ffn_size_for(teacher, len(layer_pick), s.params, fam)
    heads = s.num_attention_heads or teacher.config.num_attention_heads
    width = s.hidden_size or teacher.config.hidden_size
    hd = _head_dim(teacher.config)
    kv = getattr(teacher.config, "num_key_value_heads", None) or teacher.config.num_attention_heads
    chan = torch.as_tensor(_top(importance.channels, width)) if width < teacher.config.hidden_size else None
    for j, layer in enumerate(_layers(student)):
        t = layer_pick[j]
        if inter < teacher.config.intermediate_size:
            keep = torch.as_tensor(_top(importance.neurons[t], inter))
            for name in fam.ffn_in:
                _set(layer, name, _cut(layer.get_submodule(name), rows=keep))
            _set(layer, fam.ffn_out, _cut(layer.get_submodule(fam.ffn_out), cols=keep))
        if heads < teacher.config.num_attention_heads:
            group = teacher.config.num_attention_heads // kv
            per_group = heads // kv
            kept_heads = []
            for g in range(kv):  # the same number of query heads in every key/value group
                scores = importance.heads[t][g * group:(g + 1) * group]
                kept_heads += [g * group + int(h) for h in _top(scores, per_group)]
            rows = torch.as_tensor([h * hd + d for h in kept_heads for d in range(hd)])
            q = fam.attn_in[0]
            _set(layer, q, _cut(layer.get_submodule(q), rows=rows))
            _set(layer, fam.attn_out, _cut(layer.get_submodule(fam.attn_out), cols=rows))
            attn = layer.get_submodule(fam.attn_out.rpartition(".")[0])
            attn.num_key_value_groups = per_group
            if hasattr(attn, "num_heads"):
                attn.num_heads = heads
        if chan is not None:
            for name in fam.attn_in + fam.ffn_in:
                _set(layer, name, _cut(layer.get_submodule(name), cols=chan))
            for name in (fam.attn_out, fam.ffn_out):
                _set(layer, name, _cut(layer.get_submodule(name), rows=chan))
            for name in fam.norms:
                norm = layer.get_submodule(name)
                norm.weight = nn.Parameter(norm.weight.detach()[chan].clone())
    if chan is not None:
        emb = student.get_input_embeddings()
        new = nn.Embedding(emb.weight.shape[0], width, padding_idx=emb.padding_idx)
        with torch.no_grad():
            new.weight.copy_(emb.weight[:, chan])
        tied = student.get_output_embeddings() is not None and student.get_output_embeddings().weight is emb.weight
        student.set_input_embeddings(new)
        final = student.get_submodule("model.norm")
        final.weight = nn.Parameter(final.weight.detach()[chan].clone())
        head = student.get_output_embeddings()
        if tied:
            head.weight = new.weight
        else:
            student.set_output_embeddings(_cut(head, cols=chan))
    c = student.config
    c.intermediate_size = inter
    if heads != teacher.config.num_attention_heads or width != teacher.config.hidden_size:
        c.head_dim = hd
    c.num_attention_heads = heads
    c.hidden_size = width
    notes = {"layers": layer_pick, "layer_importance": [round(float(x), 5) for x in importance.layers],
             "intermediate_size": inter, "num_attention_heads": heads, "hidden_size": width,
             "calibration_tokens": importance.tokens, "of_teacher_layers": n_teacher,
             "of_teacher_intermediate_size": teacher.config.intermediate_size}
    return student.eval(), notes
