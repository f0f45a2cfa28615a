"""The ``generate`` stage: training data made from the teacher or from the training text.

- ``distill.augment`` (encoders): variants of each training text by masking, word replacement and
  span deletion (the teacher stage labels them with the teacher's outputs; they carry no hard label).
- ``distill.generate`` (causal LM, sequence-level distillation, Kim & Rush 2016): the teacher
  continues the first tokens of each training text; the student learns the continuation.
- ``distill.rationale`` with ``source: teacher`` (causal LM, rationale distillation, Hsieh et al. 2023):
  the teacher writes a rationale and an answer for each prompt; the student learns
  prompt -> rationale -> answer with separate weights.

The teacher is the local model, or with ``teacher.server`` the served one (distill/served.py: its
answers are stored under ``served/``, and the meta records the endpoint, the served model, the date
and the recipe's ``teacher.terms``).

Writes generated/train.jsonl (deduplicated, each row with its provenance) and generated/meta.json
(method, teacher, settings, seed, counts).
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any, Callable

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.runfiles import GeneratedFiles, RunFiles, read_jsonl, write_jsonl

if TYPE_CHECKING:
    from kd_edge.config import Recipe

_WORD = re.compile(r"\S+")

# a teacher that continues prompts: (prompts, max_new_tokens, do_sample, temperature) -> continuations
Continue = Callable[[list[str], int, bool, float], list[str]]


def augment_text(text: str, rng: random.Random, vocabulary: list[str], cfg, mask_token: str) -> str:
    """One augmented variant: each word masked with ``mask_prob``, replaced by a corpus word with
    ``replace_prob``, and with ``delete_span_prob`` one span of 1-3 words deleted."""
    words = _WORD.findall(text)
    out = []
    for w in words:
        r = rng.random()
        if r < cfg.mask_prob:
            out.append(mask_token)
        elif r < cfg.mask_prob + cfg.replace_prob:
            out.append(rng.choice(vocabulary))
        else:
            out.append(w)
    if len(out) > 3 and rng.random() < cfg.delete_span_prob:
        n = rng.randint(1, 3)
        start = rng.randrange(0, len(out) - n)
        del out[start:start + n]
    return " ".join(out)


def augment(recipe: "Recipe", rows: list[dict], mask_token: str) -> tuple[list[dict], dict]:
    """Augmented rows (no label) with provenance, deduplicated against each other and the originals."""
    cfg = recipe.distill.augment
    rng = random.Random(recipe.seed)
    vocabulary = sorted({w for r in rows for w in _WORD.findall(r["text"])})
    seen = {r["text"] for r in rows}
    out, duplicates = [], 0
    for i, r in enumerate(rows):
        for copy in range(cfg.copies):
            text = augment_text(r["text"], rng, vocabulary, cfg, mask_token)
            if text in seen or not text.strip():
                duplicates += 1
                continue
            seen.add(text)
            out.append({"text": text, "label": None, "provenance": {"method": "augment", "source_index": i, "copy": copy}})
    return out, {"duplicates_dropped": duplicates}


def _generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, do_sample: bool, temperature: float,
              batch_size: int, progress: bool) -> list[str]:
    """The teacher's continuations of ``prompts`` (left-padded batches)."""
    import torch
    from kd_edge.progress import Progress

    tokenizer.padding_side = "left"
    texts = []
    for start in Progress(range(0, len(prompts), batch_size), desc="teacher generates", unit="batch",
                          enabled=progress):
        enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 temperature=temperature if do_sample else None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id)
        texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts


def local_teacher(model, tokenizer, batch_size: int, progress: bool) -> Continue:
    return lambda prompts, n, do_sample, temperature: _generate(
        model, tokenizer, prompts, max_new_tokens=n, do_sample=do_sample, temperature=temperature,
        batch_size=batch_size, progress=progress)


def served_teacher(client, seed: int, progress: bool) -> Continue:
    """The served teacher: greedy is temperature 0 (the completions API has no do_sample)."""
    return lambda prompts, n, do_sample, temperature: client.complete(
        prompts, max_tokens=n, temperature=temperature if do_sample else 0.0, seed=seed, progress=progress)


def sequence_level(recipe: "Recipe", rows: list[dict], teacher: Continue, tokenizer) -> tuple[list[dict], dict]:
    """Prompt (the first tokens of a training text) + the teacher's continuation, deduplicated."""
    cfg = recipe.distill.generate
    prompts = []
    for r in rows[:cfg.max_prompts] if cfg.max_prompts else rows:
        ids = tokenizer(r["text"], add_special_tokens=False)["input_ids"][:cfg.prompt_tokens]
        if ids:
            prompts.append(tokenizer.decode(ids))
    prompts = list(dict.fromkeys(prompts))
    completions = teacher(prompts, cfg.max_new_tokens, cfg.do_sample, cfg.temperature)
    out, seen, duplicates = [], set(), 0
    for prompt, completion in zip(prompts, completions):
        if not completion.strip() or (prompt, completion) in seen:
            duplicates += 1
            continue
        seen.add((prompt, completion))
        out.append({"text": prompt + completion, "segments": [[prompt, 0.0], [completion, 1.0]], "label": None,
                    "provenance": {"method": "sequence_level"}})
    return out, {"prompts": len(prompts), "duplicates_dropped": duplicates}


def rationales(recipe: "Recipe", rows: list[dict], teacher: Continue) -> tuple[list[dict], dict]:
    """Prompt -> teacher rationale -> teacher answer, split at the answer marker; rows whose output has
    no answer marker are dropped (counted)."""
    cfg = recipe.distill.rationale
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    rendered = [cfg.template.format(prompt=p) for p in prompts]
    outputs = teacher(rendered, cfg.max_new_tokens, False, 1.0)
    out, no_answer = [], 0
    for prompt, text in zip(rendered, outputs):
        rationale, marker, answer = text.partition(cfg.answer_marker)
        if not marker or not answer.strip():
            no_answer += 1
            continue
        segments = [[prompt, 0.0], [rationale, cfg.rationale_weight], [marker + answer, cfg.answer_weight]]
        out.append({"text": "".join(s for s, _ in segments), "segments": segments, "label": None,
                    "provenance": {"method": "rationale"}})
    return out, {"prompts": len(prompts), "without_answer_dropped": no_answer}


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write generated/train.jsonl and generated/meta.json."""
    import torch

    from kd_edge.teachers import teacher_source
    from kd_edge.tasks import TASKS

    d = recipe.distill
    files = RunFiles(ctx.run_dir)
    rows = read_jsonl(files.data.train)
    task = TASKS.get(recipe.task)()
    source = teacher_source(recipe, ctx.run_dir)
    tokenizer = task.load_tokenizer(source)
    settings: dict[str, Any]
    provenance: dict[str, Any] = {"teacher": str(source.path)}
    if d.augment:
        method, settings = "augment", d.augment.model_dump()
        made, counts = augment(recipe, rows, tokenizer.mask_token or tokenizer.unk_token or "[MASK]")
    else:
        if recipe.teacher.server:
            from kd_edge.distill.served import ServedTeacher

            client = ServedTeacher(recipe.teacher.server, files.served)
            teacher = served_teacher(client, recipe.seed, ctx.progress)
        else:
            torch.manual_seed(recipe.seed)
            teacher = local_teacher(task.load_model(source), tokenizer, recipe.teacher.batch_size, ctx.progress)
        if d.generate:
            method, settings = "sequence_level", d.generate.model_dump()
            made, counts = sequence_level(recipe, rows, teacher, tokenizer)
        else:
            method, settings = "rationale", d.rationale.model_dump()
            made, counts = rationales(recipe, rows, teacher)
        if recipe.teacher.server:
            provenance["served"] = {**client.provenance(), "terms": recipe.teacher.terms}
    with atomic_dir(files.generated.path) as folder:
        out = GeneratedFiles(folder)
        write_jsonl(out.rows, made)
        write_json(out.meta, {"method": method, **provenance, "settings": settings, "seed": recipe.seed,
                              "n_source_rows": len(rows), "n_generated": len(made), **counts})
