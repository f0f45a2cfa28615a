"""The ``student`` stage: build the student before training, and check that it reads text exactly as
every teacher does.

- ``teacher_layers`` (DistilBERT, Sanh et al. 2019): a copy of the teacher keeping its embeddings,
  head and a chosen subset of its transformer layers.
- ``config``: the teacher's architecture with fewer layers and/or a smaller width, heads or FFN; with
  ``shrink_from_teacher`` its weights start as the teacher's cut to size (the leading rows and columns
  of each matrix from evenly spaced layers: "weight selection", Xu et al. 2023), else random.
- ``pretrained``: any existing model folder.

A tokenizer that differs from a teacher's (vocabulary, special tokens) makes every logit and token
alignment wrong; it is refused here, before training, with the first differences named.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.distill import CROSS_TOKENIZER
from kd_edge.distill.layers import find_layer_list, keep_layers
from kd_edge.errors import ConfigError
from kd_edge.teachers import pick_layers, teacher_configs, teacher_source
from kd_edge.runfiles import STUDENT_META, RunFiles
from kd_edge.tasks import TASKS
from kd_edge.tasks.kinds import ModelSource
from kd_edge.tasks.hub import resolve_model_dir, resolve_tokenizer_dir

if TYPE_CHECKING:
    from torch import nn

    from kd_edge.config import Recipe

_SPECIAL = ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "cls_token_id", "sep_token_id",
            "mask_token_id")


def resized_config(teacher_config, cfg):
    """The teacher's config with the student's sizes."""
    config = copy.deepcopy(teacher_config)
    heads = cfg.num_attention_heads or config.num_attention_heads
    width = cfg.hidden_size or config.hidden_size
    config.num_hidden_layers = cfg.layers
    config.hidden_size = width
    config.num_attention_heads = heads
    config.intermediate_size = cfg.intermediate_size or (4 * width if cfg.hidden_size else config.intermediate_size)
    if getattr(config, "num_key_value_heads", None):
        kv = min(config.num_key_value_heads, heads)
        while heads % kv:
            kv -= 1
        config.num_key_value_heads = kv
    if getattr(config, "head_dim", None):
        config.head_dim = width // heads
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:cfg.layers]
    return config


def shrink_weights(student: nn.Module, teacher: nn.Module, layer_pick: list[int], skip_vocabulary: bool = False) -> None:
    """Copy each teacher tensor into the student's tensor of the same name, cut to the student's shape
    (leading slice in every dimension); student layer j takes teacher layer ``layer_pick[j]``. With
    ``skip_vocabulary`` (a student with another vocabulary) the embedding table and head are left alone."""
    import torch

    n_teacher = teacher.config.num_hidden_layers
    t_parent, t_attr = find_layer_list(teacher, n_teacher)
    t_prefix = next(n for n, m in teacher.named_modules() if m is getattr(t_parent, t_attr))
    teacher_state = teacher.state_dict()
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            source = name
            if name.startswith(t_prefix + "."):
                j, rest = name[len(t_prefix) + 1:].split(".", 1)
                source = f"{t_prefix}.{layer_pick[int(j)]}.{rest}"
            t = teacher_state.get(source)
            if t is None or t.dim() != tensor.dim():
                continue
            if skip_vocabulary and t.shape[0] == teacher.config.vocab_size:
                continue
            tensor.copy_(t[tuple(slice(0, s) for s in tensor.shape)])


def check_tokenizers(student_tok, teachers: list[tuple[str, object]]) -> None:
    """Refuse a student whose tokenizer maps any token to another id than a teacher's, or whose special
    tokens differ: logits and token-level targets would be compared at the wrong positions."""
    vocab = student_tok.get_vocab()
    for name, tok in teachers:
        other = tok.get_vocab()
        if len(vocab) != len(other):
            raise ConfigError(f"the student's tokenizer has {len(vocab)} tokens, {name}'s has {len(other)}; "
                              f"token-level distillation needs one vocabulary: use a student built from the teacher, "
                              f"or set student.tokenizer to the student's own and a loss that accepts another "
                              f"tokenizer ({', '.join(CROSS_TOKENIZER)})")
        differ = [t for t, i in vocab.items() if other.get(t) != i]
        if differ:
            raise ConfigError(f"the student's tokenizer maps {len(differ)} tokens to other ids than {name}'s "
                              f"(e.g. {differ[:3]}); token-level distillation needs one vocabulary, or set "
                              f"student.tokenizer and a loss that accepts another ({', '.join(CROSS_TOKENIZER)})")
        for attr in _SPECIAL:
            if getattr(student_tok, attr, None) != getattr(tok, attr, None):
                raise ConfigError(f"the student's {attr} is {getattr(student_tok, attr, None)} but {name}'s is "
                                  f"{getattr(tok, attr, None)}; align the special tokens")


def save_student(model: nn.Module, tokenizer, meta: dict, out: Path) -> None:
    """save_pretrained the model and tokenizer, plus kd-edge's own notes (pooling, origin)."""
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_json(out / STUDENT_META, meta)


def own_vocabulary(config, tokenizer) -> None:
    """Give a student config the vocabulary and special tokens of its own tokenizer."""
    config.vocab_size = len(tokenizer)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, attr, getattr(tokenizer, attr, None))


def transplant_embeddings(student: nn.Module, teacher: nn.Module, teacher_tok, student_tok) -> int:
    """Start the student's embedding rows (and an untied head's) from the teacher's rows of the same
    token, else the mean of its teacher pieces (``alignment.transplant_rows``), cut to the student's
    width. Returns how many rows were copied whole."""
    import torch

    from kd_edge.distill.alignment import transplant_rows

    copied = 0
    pairs = [(student.get_input_embeddings(), teacher.get_input_embeddings())]
    s_head, t_head = student.get_output_embeddings(), teacher.get_output_embeddings()
    if s_head is not None and t_head is not None and s_head.weight is not pairs[0][0].weight:
        pairs.append((s_head, t_head))
    with torch.no_grad():
        for s_mod, t_mod in pairs:
            width = s_mod.weight.shape[1]
            rows, copied = transplant_rows(t_mod.weight[:, :width].float().numpy(), teacher_tok, student_tok,
                                           s_mod.weight.shape[0])
            s_mod.weight.copy_(torch.from_numpy(rows).to(s_mod.weight.dtype))
    return copied


def calibration_batches(task, run_dir: Path, n: int, batch_size: int = 32):
    """The first ``n`` training texts as the teacher reads them, in padded batches (the prune scores)."""
    import numpy as np

    from kd_edge.runfiles import CacheReader

    cache = CacheReader(run_dir)
    ids = cache.teacher_ids("train")
    pad = cache.meta.get("cross_tokenizer", {}).get("teacher_pad_id", cache.meta["pad_id"])
    if cache.trimmed:
        pad = int(cache.kept_ids()[pad])
    count = min(n, len(ids))
    for start in range(0, count, batch_size):
        b = task.make_batch(ids, np.arange(start, min(start + batch_size, count)), pad)
        yield b.tensors["input_ids"], b.tensors["attention_mask"]


def build(recipe: "Recipe", task, teacher: nn.Module, tokenizers: tuple | None = None,
          run_dir: Path | None = None) -> tuple[nn.Module, dict]:
    """The untrained student and notes on how it was made; ``tokenizers`` (teacher's, student's) when
    the student has its own; ``run_dir`` holds the teacher cache (the texts a pruned student is scored on)."""
    s = recipe.student
    if s.init == "teacher_layers":
        return keep_layers(teacher, list(s.layers)), {"teacher_layers": list(s.layers)}
    if s.init == "prune":
        from kd_edge.distill import pruning

        fam = pruning.family_of(teacher.config)
        scores = pruning.measure(teacher, calibration_batches(task, run_dir, s.prune_samples), fam)
        student, notes = pruning.prune(teacher, s, scores)
        return student, {"pruned": notes}
    if s.init == "config":
        import torch
        import transformers

        config = resized_config(teacher.config, s)
        if tokenizers:
            own_vocabulary(config, tokenizers[1])
        torch.manual_seed(recipe.seed)
        student = getattr(transformers, task.auto_class).from_config(config)
        picked = pick_layers(s.layers, teacher.config.num_hidden_layers)
        notes = {}
        if s.shrink_from_teacher:
            shrink_weights(student, teacher, picked, skip_vocabulary=bool(tokenizers))
            if tokenizers:
                notes["embedding_rows_from_teacher"] = transplant_embeddings(student, teacher, *tokenizers)
        return student.eval(), {"config": {k: getattr(config, k) for k in ("num_hidden_layers", "hidden_size",
                                                                          "num_attention_heads", "intermediate_size",
                                                                          "vocab_size")},
                                "shrunk_from_teacher_layers": picked if s.shrink_from_teacher else None, **notes}
    path = resolve_model_dir(s.model, what="student.model")
    student = task.load_model(ModelSource(path, allow_pickle=s.allow_pickle))
    t_labels, s_labels = getattr(teacher.config, "num_labels", None), getattr(student.config, "num_labels", None)
    if task.label_kind == "class" and t_labels != s_labels:
        raise ConfigError(f"student.model has {s_labels} labels, the teacher {t_labels}; they must match")
    return student, {"pretrained": str(path)}


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write student_init/: the untrained student with its tokenizer."""
    task = TASKS.get(recipe.task)()
    primary = teacher_source(recipe, ctx.run_dir)
    teacher = task.load_model(primary)
    tokenizer = task.load_tokenizer(primary)
    own = recipe.student.tokenizer
    own_dir = resolve_tokenizer_dir(own) if own else None
    student_tok = task.load_tokenizer(ModelSource(own_dir)) if own else None
    student, origin = build(recipe, task, teacher, (tokenizer, student_tok) if own else None, ctx.run_dir)
    others = [(f"teacher {i} ({cfg.model})", task.load_tokenizer(teacher_source(recipe, ctx.run_dir, i)))
              for i, cfg in enumerate(teacher_configs(recipe)) if i > 0]
    if own:  # the student reads its own tokens; the teachers must still read one vocabulary
        check_tokenizers(tokenizer, others)
        if student.get_input_embeddings().weight.shape[0] < len(student_tok):
            raise ConfigError(f"student.model has {student.get_input_embeddings().weight.shape[0]} embedding rows, "
                              f"student.tokenizer {len(student_tok)} tokens; give the student the tokenizer it was "
                              "trained with")
        tokenizer = student_tok
        origin["tokenizer"] = str(own_dir)
    elif recipe.student.vocabulary == "trim":  # the teacher's table cut to the tokens the training text uses
        from kd_edge.distill.vocabulary import trim_embeddings
        from kd_edge.runfiles import CacheReader

        check_tokenizers(tokenizer, others)
        cache = CacheReader(ctx.run_dir)
        tokenizer = task.load_tokenizer(ModelSource(cache.files.trimmed_tokenizer))
        trim_embeddings(student, cache.kept_ids(), tokenizer.pad_token_id)
        origin["vocabulary"] = cache.meta["vocabulary"]
    else:
        if recipe.student.init == "pretrained":
            tokenizer = task.load_tokenizer(ModelSource(resolve_model_dir(recipe.student.model, what="student.model")))
            others.insert(0, (f"the teacher ({recipe.teacher.model})", task.load_tokenizer(primary)))
        check_tokenizers(tokenizer, others)
    meta = {"task": recipe.task, "init": recipe.student.init, "teacher": str(primary.path), **origin,
            "pooling": recipe.teacher.pooling, "normalize": recipe.teacher.normalize,
            "params": sum(p.numel() for p in student.parameters())}
    with atomic_dir(RunFiles(ctx.run_dir).student_init) as out:
        save_student(student, tokenizer, meta, out)
