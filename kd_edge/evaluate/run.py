"""The ``evaluate`` stage: teachers and distilled student on the held-out split, in PyTorch.

Writes eval/metrics.json (per model: parameters and task metrics) and, for encoders, the student's
test outputs (embeddings or logits) that ``verify`` compares every exported file against, plus the
sentiment probes (JSON, no pickle) of embedding tasks; for causal LMs, the greedy samples of teacher and
student from fixed held-out prompts and how much each repeats itself (``checks/generations.py``).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from kd_edge.artifacts import StageContext, atomic_dir, read_json, write_json
from kd_edge.evaluate.slices import slice_masks, slice_report
from kd_edge.runfiles import CacheReader, EvalFiles, RunFiles, read_jsonl, student_meta
from kd_edge.tasks import TASKS
from kd_edge.tasks.kinds import ModelSource

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def _no_grad(fn):
    """``torch.no_grad()`` as a decorator, importing torch only when the stage runs."""
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return inner


@_no_grad
def predict(task, model, cache: CacheReader, split: str, meta: dict, batch_size: int, progress: bool) -> np.ndarray:
    """Example-level outputs (pooled embedding or logits) of ``model`` on a split."""
    out = None
    key = task.kind.output_field
    for batch in task.batches(cache.ids(split), batch_size, cache.meta["pad_id"], desc=f"student {split}",
                              progress=progress):
        y = task.forward(model, batch, meta=meta)[key].float().numpy()
        if out is None:
            out = np.zeros((len(cache.ids(split)),) + y.shape[1:], np.float32)
        out[batch.idx] = y
    return out


def _embedding(recipe, task, model, cache, meta, ctx, files) -> dict:
    from kd_edge.tasks.embedding_metrics import embedding_metrics, fit_probe

    cfg = recipe.evaluate
    train_labels, test_labels = cache.labels("train"), cache.labels("test")
    student = {s: predict(task, model, cache, s, meta, cfg.batch_size, ctx.progress) for s in ("train", "test")}
    teacher_test = np.asarray(cache.field(0, "test", "pooled"))
    labelled = train_labels >= 0
    use_probe = cfg.probe and len(np.unique(train_labels[labelled])) >= 2
    from kd_edge.tasks.embedding_metrics import probe_predict

    models, correct = {}, {}
    candidates = [(f"teacher_{i}" if i else "teacher", {s: np.asarray(cache.field(i, s, "pooled")) for s in ("train", "test")})
                  for i in range(cache.n_teachers())] + [("student", student)]
    for name, emb in candidates:
        probe = fit_probe(emb["train"][labelled], train_labels[labelled], c=cfg.probe_c, seed=recipe.seed) if use_probe else None
        if probe is not None:
            files[EvalFiles.probe_name(name)] = probe
            correct[name] = probe_predict(probe, emb["test"]) == test_labels
        models[name] = embedding_metrics(emb["test"], teacher_test, test_labels, probe, cfg.knn_k)
    files[EvalFiles.STUDENT_TEST] = student["test"]
    if use_probe:
        files["_scores"] = {"kind": "accuracy", "teacher": correct["teacher"], "student": correct["student"],
                            "valid": test_labels >= 0}
    return models


def _classification(recipe, task, model, cache, meta, ctx, files) -> dict:
    from kd_edge.tasks.logit_metrics import classification_metrics

    labels = cache.labels("test")
    teacher = np.asarray(cache.field(0, "test", "logits"))
    student = predict(task, model, cache, "test", meta, recipe.evaluate.batch_size, ctx.progress)
    files[EvalFiles.STUDENT_TEST] = student
    models = {(f"teacher_{i}" if i else "teacher"): classification_metrics(np.asarray(cache.field(i, "test", "logits")),
                                                                           teacher, labels)
              for i in range(cache.n_teachers())}
    models["student"] = classification_metrics(student, teacher, labels)
    files["_scores"] = {"kind": "accuracy", "teacher": teacher.argmax(-1) == labels, "student": student.argmax(-1) == labels,
                        "valid": labels >= 0}
    files["_per_class"] = per_class(teacher, student, labels, class_names(ctx.run_dir, model))
    return models


def class_names(run_dir, model) -> list[str] | None:
    """Names of the classes in id order: as the data named them (data.label_names, or name labels),
    else the model's id2label unless those are transformers' placeholders (LABEL_0, ...)."""
    meta = RunFiles(run_dir).data.meta
    names = read_json(meta).get("label_names") if meta.is_file() else None
    if names:
        return list(names)
    id2label = getattr(model.config, "id2label", None) or {}
    ordered = [id2label.get(i, id2label.get(str(i))) for i in range(len(id2label))]
    if ordered and all(isinstance(n, str) for n in ordered) and not all(n == f"LABEL_{i}" for i, n in enumerate(ordered)):
        return ordered
    return None


@_no_grad
def _lm_metrics(task, model, cache, meta, batch_size: int) -> tuple[dict, np.ndarray]:
    """Perplexity, top-1 agreement and KL from teacher 0 of ``model`` on the held-out split, and each
    text's summed NLL."""
    import torch

    from kd_edge.data.packed import length_batches
    from kd_edge.distill.losses import kl

    ids, weights = cache.ids("test"), cache.weights("test")
    nll = kl_sum = agree = count = 0.0
    per_text = np.zeros(len(ids))
    for idx in length_batches(ids.lengths(), batch_size):
        batch = task.make_batch(ids, idx, cache.meta["pad_id"], weights=weights)
        logits = task.forward(model, batch, meta=meta)["logits"].float()
        mask = (batch["token_weights"] > 0).float()
        tok_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"].clamp(min=0), reduction="none")
        nll += float((tok_nll * mask).sum())
        per_text[idx] = (tok_nll * mask).sum(-1).numpy()
        count += float(mask.sum())
        if cache.cross_tokenizer:  # token ids of two vocabularies: no top-1 or KL to compare
            continue
        teacher = task.teacher_targets({k: torch.from_numpy(v) for k, v in cache.batch(0, "test", idx).items()})
        agree += float(((logits.argmax(-1) == teacher["topk_indices"][..., 0].long()).float() * mask).sum())
        kl_sum += float(kl({"logits": logits}, teacher, {"token_weights": mask})) * float(mask.sum())
    if cache.cross_tokenizer:
        return {"perplexity": math.exp(nll / count), "top1_agreement_with_teacher": None, "kl_from_teacher": None}, per_text
    return {"perplexity": math.exp(nll / count), "top1_agreement_with_teacher": agree / count,
            "kl_from_teacher": kl_sum / count}, per_text


def predicted_bytes(tokenizer, ids) -> np.ndarray | None:
    """Per held-out text, the UTF-8 bytes of the text its tokens after the first stand for (what a
    causal LM predicts), so that models with different tokenizers compare as bits per byte."""
    def size(tokens) -> int:
        return len(tokenizer.decode(tokens, skip_special_tokens=True).encode("utf-8"))

    return np.array([size(ids[i].tolist()) - size(ids[i][:1].tolist()) for i in range(len(ids))], np.float64)


def bits_per_byte(nll: np.ndarray, nbytes: np.ndarray | None) -> float | None:
    """Summed NLL (nats) over the bytes it predicted, in bits."""
    return float(nll.sum() / math.log(2) / nbytes.sum()) if nbytes is not None and nbytes.sum() > 0 else None


def _causal_lm(recipe, task, model, cache, meta, ctx, files) -> dict:
    from kd_edge.teachers import teacher_source

    ids, weights = cache.ids("test"), cache.weights("test")
    teacher_ids = cache.teacher_ids("test")
    teacher_weights = cache.teacher_weights("test")
    models = {}
    w = _position_mask(teacher_ids, teacher_weights)
    # bits per byte: what compares models that read text with different tokenizers
    whole = weights is None  # (texts with weighted segments predict only part of their bytes)
    student_tok = task.load_tokenizer(ModelSource(RunFiles(ctx.run_dir).student))
    student_bytes = predicted_bytes(student_tok, ids) if whole else None
    teacher_bytes = student_bytes if not cache.cross_tokenizer or not whole else \
        predicted_bytes(task.load_tokenizer(teacher_source(recipe, ctx.run_dir)), teacher_ids)
    for i in range(cache.n_teachers()):
        lp = np.asarray(cache.field(i, "test", "target_logprob"), np.float64)
        nll_i = -np.add.reduceat(lp * w, teacher_ids.offsets[:-1]) if len(teacher_ids) else np.zeros(0)
        models[f"teacher_{i}" if i else "teacher"] = {"perplexity": math.exp(-float((lp * w).sum()) / w.sum()),
                                                      "bits_per_byte": bits_per_byte(nll_i, teacher_bytes)}
        if i == 0:
            teacher_nll = nll_i
    tokens = np.add.reduceat(_position_mask(ids, weights), ids.offsets[:-1]) if len(ids) else np.zeros(0)
    models["student"], student_nll = _lm_metrics(task, model, cache, meta, recipe.evaluate.batch_size)
    models["student"]["bits_per_byte"] = bits_per_byte(student_nll, student_bytes)
    if not cache.cross_tokenizer:  # per-text perplexities of two tokenizations do not compare
        files["_scores"] = {"kind": "perplexity", "teacher": teacher_nll, "student": student_nll, "tokens": tokens,
                            "valid": np.ones(len(ids), dtype=bool)}
        models["teacher"]["top1_agreement_with_teacher"] = 1.0
    generators = {"student": model}
    baseline_dir = RunFiles(ctx.run_dir).baseline
    if recipe.trains_baseline():  # the same student trained without the teacher
        generators["baseline"] = task.load_model(ModelSource(baseline_dir)).eval()
        metrics, baseline_nll = _lm_metrics(task, generators["baseline"], cache, meta, recipe.evaluate.batch_size)
        models["baseline"] = {**metrics, "bits_per_byte": bits_per_byte(baseline_nll, student_bytes),
                              "params": sum(p.numel() for p in generators["baseline"].parameters()),
                              **paired_ratio(student_nll, baseline_nll, tokens, seed=recipe.seed)}
    if recipe.evaluate.sample_prompts:
        measures, files["_samples"] = _samples(recipe, task, generators, ids, ctx, student_tok, cache.cross_tokenizer)
        for name, m in measures.items():
            models[name].update(m)
    return models


BOOTSTRAP = 1000  # resamples of the held-out texts for the student-vs-baseline interval


def paired_ratio(student_nll: np.ndarray, baseline_nll: np.ndarray, tokens: np.ndarray, seed: int = 0) -> dict:
    """The student's held-out perplexity over the baseline's, with a paired bootstrap over the texts
    (both models scored on the same resampled texts): its standard error and 95 % interval, and
    whether that interval leaves out 1 (the teacher changed perplexity measurably)."""
    n = len(tokens)
    if n < 2 or not tokens.sum():
        return {}
    ratio = math.exp((student_nll.sum() - baseline_nll.sum()) / tokens.sum())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(BOOTSTRAP, n))
    counts = tokens[draws].sum(1)
    ratios = np.exp((student_nll[draws].sum(1) - baseline_nll[draws].sum(1)) / np.maximum(counts, 1))
    low, high = np.percentile(ratios, [2.5, 97.5])
    return {"student_vs_baseline": {"perplexity_ratio": ratio, "se": float(ratios.std(ddof=1)),
                                    "ci95": [float(low), float(high)], "bootstrap": BOOTSTRAP, "texts": n,
                                    "significant": bool(high < 1 or low > 1)}}


def _samples(recipe, task, generators: dict, ids, ctx, tokenizer, own_tokens: bool) -> tuple[dict, list[dict]]:
    """Greedy continuations of the fixed held-out prompts by the teacher and each of ``generators``
    (see ``checks/generations.py``), and how much each repeats itself. A teacher with another tokenizer
    than the student's continues the same prompt text, read with its own."""
    from kd_edge.checks.generations import held_out_prompts, samples
    from kd_edge.teachers import teacher_source

    cfg = recipe.evaluate
    texts = [np.asarray(ids[i], np.int64) for i in range(len(ids))]
    prompts = held_out_prompts(texts, cfg.sample_prompts, cfg.sample_prompt_tokens)
    source = teacher_source(recipe, ctx.run_dir)
    teacher = task.load_model(source).eval()
    decode = lambda tok: lambda t: tok.decode(t, skip_special_tokens=True)  # noqa: E731
    students = {n: m.eval() for n, m in generators.items()}
    if not own_tokens:
        students = {"teacher": teacher, **students}
    else:
        teacher_tok = task.load_tokenizer(source)
        teacher_prompts = [teacher_tok(decode(tokenizer)(p))["input_ids"] for p in prompts]
        measures, rows = samples({"teacher": teacher}, teacher_prompts, cfg.sample_new_tokens, teacher_tok.eos_token_id,
                                 decode(teacher_tok), cfg.loop_threshold)
    own, own_rows = samples(students, prompts, cfg.sample_new_tokens, tokenizer.eos_token_id, decode(tokenizer),
                            cfg.loop_threshold)
    del teacher
    if "teacher" in students:
        return own, own_rows
    return {**measures, **own}, [{**t, **s} for t, s in zip(rows, own_rows)]


def per_class(teacher: np.ndarray, student: np.ndarray, labels: np.ndarray,
              names: list[str] | None = None) -> list[dict]:
    """Per class: its count and the teacher's and student's recall (the share of its texts predicted
    as it), with the student's delta, and its name when known."""
    out = []
    for c in sorted(set(labels[labels >= 0].tolist())):
        sel = labels == c
        t, s = float((teacher[sel].argmax(-1) == c).mean()), float((student[sel].argmax(-1) == c).mean())
        out.append({"class": int(c), "name": names[c] if names and c < len(names) else None, "n": int(sel.sum()),
                    "teacher_recall": t, "student_recall": s, "delta": s - t})
    return out


def _position_mask(ids, weights) -> np.ndarray:
    """1 for each token position that predicts a next token with weight > 0 (packed, like the cache)."""
    mask = np.zeros(int(ids.offsets[-1]), np.float64)
    for i in range(len(ids)):
        start, end = ids.offsets[i], ids.offsets[i + 1]
        nxt = np.ones(end - start - 1) if weights is None else (np.asarray(weights[i][1:]) > 0).astype(np.float64)
        mask[start:end - 1] = nxt
    return mask


def _cache_summary(cache: CacheReader) -> dict:
    """What the report says of the teacher cache: tokens, and per teacher the bytes it kept per token."""
    meta = cache.meta
    out = {"train_tokens": meta["splits"]["train"]["tokens"], "test_tokens": meta["splits"]["test"]["tokens"],
           "teachers": [{"model": t["model"], "fields": sorted(t["fields"]), "top_k": t.get("top_k"),
                         "bytes_per_token": t.get("bytes_per_token")} for t in meta["teachers"]]}
    cross = meta.get("cross_tokenizer")
    if cross:  # the train/test tokens above are the student's; the teachers' are apart
        out["cross_tokenizer"] = {"student_tokenizer": cross["student_tokenizer"], "student_vocab_size": meta["vocab_size"],
                                  "teacher_vocab_size": cross["teacher_vocab_size"],
                                  "matched_tokens": cross["matched_tokens"],
                                  "teacher_train_tokens": cross["splits"]["train"]["teacher_tokens"],
                                  "aligned": {s: v["aligned"] for s, v in cross["splits"].items()}}
    return out


# how each task kind is evaluated (one entry per kind in tasks/kinds.py)
EVALUATORS = {"sentence_embedding": _embedding, "sequence_classification": _classification, "causal_lm": _causal_lm}


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write eval/metrics.json and what verify needs."""
    task = TASKS.get(recipe.task)()
    cache = CacheReader(ctx.run_dir)
    run_files = RunFiles(ctx.run_dir)
    sdir = run_files.student
    meta = student_meta(sdir)
    model = task.load_model(ModelSource(sdir))
    files: dict = {}
    models = EVALUATORS[recipe.task](recipe, task, model, cache, meta, ctx, files)
    for i, t in enumerate(cache.meta["teachers"]):
        models[f"teacher_{i}" if i else "teacher"]["params"] = t["params"]
    models["student"]["params"] = sum(p.numel() for p in model.parameters())
    labels = cache.labels("test")
    scores, classes = files.pop("_scores", None), files.pop("_per_class", None)
    generations = files.pop("_samples", None)
    slices = None
    if recipe.evaluate.slices and scores is not None:
        rows = read_jsonl(run_files.data.test)
        slices = slice_report(slice_masks(rows, recipe.evaluate.slices), scores,
                              recipe.evaluate.slice_gap_threshold, recipe.evaluate.min_slice_size)
    with atomic_dir(run_files.eval.path) as out:
        for name, value in files.items():
            if name.endswith(".npy"):
                np.save(out / name, value)
            else:
                write_json(out / name, value)
        write_json(EvalFiles(out).metrics, {"task": recipe.task, "quality_metric": task.quality_metric,
                                          "higher_is_better": task.higher_is_better, "knn_k": recipe.evaluate.knn_k,
                                          "n_test": len(cache.ids("test")), "n_test_labelled": int((labels >= 0).sum()),
                                          "models": models, "per_class": classes, "slices": slices,
                                          "teacher_cache": _cache_summary(cache),
                                          **({"samples": generations, "loop_threshold": recipe.evaluate.loop_threshold}
                                             if generations is not None else {})})
