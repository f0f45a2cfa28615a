"""The ``teacher`` stage: tokenize the training and test text once and cache every teacher's outputs.

The cache holds, per split, the token ids the whole run uses (and per-token loss weights where
examples have segments), and per teacher the outputs its task caches: pooled embeddings, class logits,
or for causal LMs the top-k log-probabilities (fp16) with their ids (uint16) and the log-normalisers
(``tasks/causal_lm.py: CACHE_LAYOUT``), plus (train split) the hidden states the losses read, in fp16.
Arrays are .npy files written and read memory-mapped; ``meta.json`` records each teacher's bytes per token.

Under ``accelerate launch`` (or torchrun) every process runs this stage on its share of the batches
(every ``world``-th, from its rank): the others write their outputs into ``_teacher_shards/rank-<r>/``
and the first process, which cached its own share meanwhile, copies them into the one cache and removes
the shards. The batches are the ones a single process makes, so the cache is the same.

``meta.json`` records the stage key: a digest of the teachers' files, the data and what is cached.
With ``teacher.cache_dir`` the arrays live in ``<cache_dir>/<key>/`` and are reused by any run with
the same key; the run's ``teacher_cache/meta.json`` points there. A cache with another key is never
reused.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_edge.artifacts import StageContext, atomic_dir, distributed_rank, read_json, write_json
from kd_edge.data.packed import Packed
from kd_edge.distill.alignment import align, aligned_share, encode, vocab_map
from kd_edge.errors import ArtifactError
from kd_edge.distill import needs_of
from kd_edge.teachers import hidden_layers_needed, logit_temperatures, teacher_configs, teacher_source
from kd_edge.runfiles import CacheFiles, RunFiles, read_jsonl, training_rows
from kd_edge.tasks import TASKS
from kd_edge.tasks.hub import resolve_tokenizer_dir
from kd_edge.tasks.kinds import task_kind

if TYPE_CHECKING:
    from kd_edge.config import Recipe

SPLITS = ("train", "test")


def tokenize_rows(tokenizer, rows: list[dict], max_length: int) -> tuple[Packed, Packed | None]:
    """Token ids of each row (special tokens added, truncated, unpadded) and, when any row has
    weighted segments, the loss weight of every token."""
    ids, weights, _ = encode(tokenizer, rows, max_length, ends=False)
    return ids, weights


def reserve(path: Path) -> None:
    """Allocate every block of a freshly created (sparse) memory-mapped file now: writing to a page
    the disk has no room for kills the process with SIGBUS, while this fails with ENOSPC."""
    import os

    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: a file system without fallocate
                    raise OSError(e.errno, e.strerror, str(path)) from e


class _FieldWriter:
    """Writes a cache field batch by batch into a memory-mapped .npy (example- or token-level)."""

    def __init__(self, path: Path, level: str, ids: Packed, allocate: bool = True):
        self.path, self.level, self.ids, self.allocate = path, level, ids, allocate
        self.array: np.ndarray | None = None

    def _open(self, dtype, row_shape: tuple[int, ...]) -> None:
        if self.array is None:
            rows = len(self.ids) if self.level == "example" else int(self.ids.offsets[-1])
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=(rows, *row_shape))
            if self.allocate:
                reserve(self.path)

    def write(self, idx: np.ndarray, values: np.ndarray) -> None:
        self._open(values.dtype, values.shape[1:] if self.level == "example" else values.shape[2:])
        if self.level == "example":
            self.array[idx] = values
        else:
            for row, i in enumerate(idx):
                start, end = self.ids.offsets[i], self.ids.offsets[i + 1]
                self.array[start:end] = values[row, :end - start]

    def copy(self, idx: np.ndarray, source: np.ndarray) -> None:
        """The rows of examples ``idx`` from ``source``, a field of the same layout (another process's shard)."""
        self._open(source.dtype, source.shape[1:])
        if self.level == "example":
            self.array[idx] = source[idx]
        else:
            for i in idx:
                start, end = self.ids.offsets[i], self.ids.offsets[i + 1]
                self.array[start:end] = source[start:end]

    def close(self) -> None:
        if self.array is not None:
            self.array.flush()
            self.array = None


def cache_teacher(task, model, ids: dict[str, Packed], weights: dict[str, Packed | None], labels: dict[str, np.ndarray],
                  out: "CacheFiles", index: int, *, meta_task: dict, pad_id: int, batch_size: int, spec_by_split: dict,
                  progress: bool, name: str, share: tuple[int, int] = (0, 1), shards: list["CacheFiles"] = (),
                  barrier=None) -> dict[str, str]:
    """Run teacher ``index`` over every split; write its fields into the cache ``out``; return {field: level}.

    With ``share`` (rank, world) only every world-th batch, from rank's; then, after ``barrier`` (every
    process has cached its share), the first process copies the other processes' batches from
    ``shards`` (their caches, rank 1 first)."""
    import torch

    from kd_edge.data.packed import length_batches
    from kd_edge.progress import Progress

    out.teacher(index).mkdir(parents=True, exist_ok=True)
    levels: dict[str, str] = {}
    rank, world = share
    writers: dict[str, dict[str, _FieldWriter]] = {}
    batches = {split: length_batches(ids[split].lengths(), batch_size) for split in spec_by_split}
    for split, spec in spec_by_split.items():
        if spec is None:
            continue
        mine = writers.setdefault(split, {})
        for idx in Progress(batches[split][rank::world], desc=f"{name} {split}", unit="batch", enabled=progress,
                            leave=False):
            batch = task.make_batch(ids[split], idx, pad_id, labels[split], weights[split])
            with torch.no_grad():
                result = task.forward(model, batch, meta=meta_task, hidden_layers=spec.hidden_layers)
            for field, (level, tensor) in task.cache_outputs(result, batch, spec).items():
                if field not in mine:
                    mine[field] = _FieldWriter(out.field(index, split, field), level, ids[split], allocate=rank == 0)
                    levels[field] = level
                mine[field].write(idx, tensor.detach().cpu().numpy())
    if rank > 0:  # what the first process reads back: the fields of each split
        for split, mine in writers.items():
            for w in mine.values():
                w.close()
        write_json(out.teacher(index) / "levels.json", {s: {f: levels[f] for f in w} for s, w in writers.items()})
    if barrier is not None:
        barrier()
    for r, shard in enumerate(shards, 1):
        for split, fields in read_json(shard.teacher(index) / "levels.json").items():
            mine = writers.setdefault(split, {})
            for field, level in fields.items():
                if field not in mine:
                    mine[field] = _FieldWriter(out.field(index, split, field), level, ids[split])
                    levels[field] = level
                source = np.load(shard.field(index, split, field), mmap_mode="r")
                for idx in batches[split][r::world]:
                    mine[field].copy(idx, source)
    for mine in writers.values():
        for w in mine.values():
            w.close()
    return levels


def cache_served(client, tokenizer, ids: dict[str, Packed], out: "CacheFiles", index: int, *, top_k: int,
                 splits: list[str], progress: bool) -> tuple[dict[str, str], dict]:
    """Teacher ``index`` served (``teacher.server``): its top-k log-probabilities of every text, asked
    of the server (or read from the store), written as the cache's sparse targets (the layout of
    ``tasks/causal_lm.py: cache_outputs``, log-normaliser 0). Returns {field: level} and what the
    server's answers needed (how entries were paired with tokens, positions without a teacher)."""
    from kd_edge.distill.served import ServedTeacherError, entries_follow_their_token, sparse_targets, token_texts

    out.teacher(index).mkdir(parents=True, exist_ok=True)
    texts_of = token_texts(tokenizer)
    levels: dict[str, str] = {}
    totals: dict[str, int] = {}
    after = None
    for split in splits:
        seqs = [np.asarray(ids[split][i]) for i in range(len(ids[split]))]
        decoded = [[tokenizer.decode([int(t)]) for t in seq] for seq in seqs]
        answers = client.score([tokenizer.decode(seq.tolist()) for seq in seqs], top_k=top_k,
                               progress=progress)
        if after is None:
            after, probe = entries_follow_their_token(client, tokenizer, answers, seqs, top_k)
        writers: dict[str, _FieldWriter] = {}
        for i, (answer, seq, dec) in enumerate(zip(answers, seqs, decoded)):
            fields, counts = sparse_targets(answer, seq, dec, texts_of, top_k, len(tokenizer), after)
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
            for field, values in fields.items():
                if field not in writers:
                    writers[field] = _FieldWriter(out.field(index, split, field), "token", ids[split])
                    levels[field] = "token"
                writers[field].write(np.array([i]), values[None])
        for w in writers.values():
            w.close()
    texts = sum(len(ids[s]) for s in splits)
    if totals.get("misread", 0) > 0.05 * texts:
        raise ServedTeacherError(f"the teacher server at {client.cfg.url} read {totals['misread']} of {texts} texts as "
                                 "other tokens than teacher.model's tokenizer does; serve the model whose tokenizer "
                                 "teacher.model holds")
    return levels, {**totals, "texts": texts, "entries": "after their token" if after else "openai", **probe}


def bytes_per_token(out: "CacheFiles", index: int, levels: dict[str, str]) -> dict[str, int] | None:
    """What teacher ``index`` stores per token (the train split's fields, else the test split's): the
    logit targets and, apart, the hidden states (the held-out split's own target log-prob not counted)."""
    for split in SPLITS:
        paths = {f: out.field(index, split, f) for f, level in levels.items()
                 if level == "token" and out.field(index, split, f).is_file()}
        if paths:
            sizes = {"targets": 0, "hidden": 0}
            for field, path in paths.items():
                arr = np.load(path, mmap_mode="r")
                sizes["hidden" if field.startswith("hidden_") else "targets"] += arr.dtype.itemsize * int(np.prod(arr.shape[1:]))
            return {**sizes, "split": split}
    return None


def _train_spec(recipe: "Recipe", spec, live: bool):
    """What to cache on the train split: everything offline; in live/mutual mode only the cheap
    per-example outputs the evaluation uses (nothing for causal LMs)."""
    from kd_edge.tasks.kinds import CacheSpec

    if not live:
        return spec
    return CacheSpec() if task_kind(recipe.task).cache_train_live() else None


def _served_teacher(recipe: "Recipe", cfg, ctx: StageContext, tokenizer, ids, out: "CacheFiles", index: int,
                    live: bool) -> dict:
    """Cache a served teacher's targets; its entry in the cache's meta."""
    from kd_edge.distill.served import ServedTeacher

    client = ServedTeacher(cfg.server, RunFiles(ctx.run_dir).served)
    splits = ["train", "test"] if not live else ["test"]
    levels, answers = cache_served(client, tokenizer, ids, out, index, top_k=cfg.top_k, splits=splits,
                                   progress=ctx.progress)
    return {"model": cfg.model, "path": str(teacher_source(recipe, ctx.run_dir, index).path), "class": "served",
            "hidden_size": None, "params": None, "fields": levels, "bytes_per_token": bytes_per_token(out, index, levels),
            "top_k": cfg.top_k, "hidden_layers": [], "weight": cfg.weight, "num_labels": None,
            "served": {**client.provenance(), "terms": cfg.terms, "answers": answers}}


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _student_tokenizer(recipe: "Recipe", task):
    """The student's own tokenizer (``student.tokenizer``), or None when it reads the teacher's tokens."""
    if not recipe.student.tokenizer:
        return None
    from kd_edge.tasks.kinds import ModelSource

    return task.load_tokenizer(ModelSource(resolve_tokenizer_dir(recipe.student.tokenizer)))


def _two_tokenizations(teacher_tok, student_tok, rows: list[dict], max_length: int, out: "CacheFiles", split: str,
                       ids: dict, weights: dict) -> tuple[Packed, Packed | None, dict]:
    """Tokenize a split both ways: the teacher's tokens (into ``ids``/``weights``, saved as the cache's
    teacher ids) and the student's (returned), with each student position's aligned teacher position
    saved as the split's alignment."""
    ids[split], weights[split], teacher_ends = encode(teacher_tok, rows, max_length)
    student_ids, student_weights, student_ends = encode(student_tok, rows, max_length)
    alignment = align(student_ends, teacher_ends)
    ids[split].save(out.path, out.teacher_ids_name(split))
    if weights[split] is not None:
        np.save(out.teacher_weights(split), weights[split].values)
    np.save(out.alignment(split), alignment)
    return student_ids, student_weights, {"teacher_tokens": int(ids[split].offsets[-1]),
                                          "aligned": aligned_share(student_ends, alignment)}


def _changed_rows(a: Packed, b: Packed) -> int:
    """How many rows of two packings of the same texts hold other tokens."""
    return int(sum(not np.array_equal(a[i], b[i]) for i in range(len(a))))


def _trim(recipe: "Recipe", tokenizer, rows: dict, out: "CacheFiles") -> tuple[Any, dict]:
    """``student.vocabulary: trim``: write the student's tokenizer (the teacher's, keeping the tokens the
    training text uses) and the kept ids into the cache; refuse one that loses too much of the held-out text.
    Returns the trimmed tokenizer and what the cache's meta records of it."""
    from kd_edge.distill import vocabulary as vocab
    from kd_edge.errors import ConfigError

    s = recipe.student
    vocab.check_trimmable(tokenizer)
    n = len(tokenizer)
    train, _ = tokenize_rows(tokenizer, rows["train"], recipe.data.max_length)
    test, _ = tokenize_rows(tokenizer, rows["test"], recipe.data.max_length)
    keep = vocab.kept_ids(tokenizer, vocab.token_counts(train.values, n), s.vocabulary_min_count)
    special = [i for i in tokenizer.all_special_ids if i is not None]
    share, lost = vocab.unknown_share(test.values, keep, n, special)
    if share > s.vocabulary_max_unknown:
        raise ConfigError(f"student.vocabulary: trim keeps {len(keep):,} of {n:,} tokens, but {share:.1%} of the "
                          f"held-out tokens ({lost:,}) are outside it, more than student.vocabulary_max_unknown="
                          f"{s.vocabulary_max_unknown:g}; lower student.vocabulary_min_count, train on more text, or "
                          "raise the limit")
    trimmed = vocab.write_trimmed(tokenizer, keep, out.trimmed_tokenizer)
    np.save(out.kept_ids, keep)
    return trimmed, {"method": "trim", "teacher_vocab_size": n, "kept": int(len(keep)),
                     "min_count": s.vocabulary_min_count, "held_out_outside": round(share, 6),
                     "held_out_tokens_outside": lost, "max_unknown": s.vocabulary_max_unknown}


def _processes(recipe: "Recipe"):
    """Accelerate's state of the processes of one run under `accelerate launch` (None alone), set up as
    the trainer's Accelerator will find it (the state is one per process: the first set-up decides)."""
    if distributed_rank()[1] == 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=recipe.distill.cpu or not torch.cuda.is_available())


@contextmanager
def _shard_dir(path: Path):
    """Another process's share of the cache: a plain folder the first process reads and removes."""
    path.mkdir(parents=True, exist_ok=True)
    yield path


@contextmanager
def _shared_lock(target: Path | None):
    """Hold the lock of one key's folder in a shared cache (a second run of the same key waits, then
    reuses it), and remove what a killed writer of that key left behind."""
    import fcntl

    if target is None or distributed_rank()[0] > 0:
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        for leftover in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        yield


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write teacher_cache/ (or a pointer to the shared cache with this stage's key)."""
    shared_root = recipe.teacher.cache_dir
    target = Path(shared_root).expanduser().resolve() / ctx.key[:24] if shared_root else None
    with _shared_lock(target):
        _run(recipe, ctx, target)


def _run(recipe: "Recipe", ctx: StageContext, target: Path | None) -> None:
    from kd_edge.tasks.kinds import CacheSpec

    task = TASKS.get(recipe.task)()
    primary = teacher_source(recipe, ctx.run_dir)
    tokenizer = task.load_tokenizer(primary)
    pad_id = _pad_id(tokenizer)
    files = RunFiles(ctx.run_dir)
    shared = CacheFiles(target) if target is not None else None
    if shared is not None and not ctx.fresh and shared.meta.is_file() and read_json(shared.meta).get("key") == ctx.key:
        meta = read_json(shared.meta)
        with atomic_dir(files.teacher_cache.path) as out:
            write_json(CacheFiles(out).meta, {**meta, "shared": str(target), "reused": True})
        return
    processes = _processes(recipe)
    rank, world = (processes.process_index, processes.num_processes) if processes else (0, 1)
    shard_root = files.root / "_teacher_shards"
    if rank == 0:
        shutil.rmtree(shard_root, ignore_errors=True)
    if processes:
        processes.wait_for_everyone()  # no process writes a shard before the old ones are gone
    meta_task = {"pooling": recipe.teacher.pooling, "normalize": recipe.teacher.normalize}
    rows = {"train": training_rows(recipe, ctx.run_dir), "test": read_jsonl(files.data.test)}
    if not rows["train"]:
        generated = files.generated.meta
        detail = ""
        if generated.is_file():
            g = read_json(generated)
            detail = (f" ({g['method']}: {g['n_generated']} of {g.get('prompts', g['n_source_rows'])} prompts gave usable "
                      f"output; {g.get('without_answer_dropped', g.get('duplicates_dropped', 0))} dropped)")
        raise ArtifactError(f"no training rows{detail}; check the generation settings (answer_marker, template, "
                            "max_new_tokens) or give rationales in the data (rationale.source: data)")
    student_tok = _student_tokenizer(recipe, task)
    meta: dict[str, Any] = {
        "key": ctx.key, "task": recipe.task, "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer), "pad_id": pad_id, "max_length": recipe.data.max_length, **meta_task,
        "splits": {}, "teachers": [],
    }
    if student_tok is not None:  # the run's tokens (ids, pad, vocabulary) are the student's
        meta.update({"tokenizer_class": type(student_tok).__name__, "vocab_size": len(student_tok),
                     "pad_id": _pad_id(student_tok)})
        meta["cross_tokenizer"] = {"student_tokenizer": str(student_tok.name_or_path),
                                   "teacher_vocab_size": len(tokenizer), "teacher_pad_id": pad_id, "splits": {}}
    live = recipe.distill.mode != "offline"
    shards = [CacheFiles(shard_root / f"rank-{r}") for r in range(1, world)]
    holder = atomic_dir(target if target else files.teacher_cache.path) if rank == 0 else \
        _shard_dir(shard_root / f"rank-{rank}")
    with holder as folder:
        out = CacheFiles(folder)
        ids, weights, labels = {}, {}, {}  # what the teachers read
        trimmed = None
        if recipe.student.vocabulary == "trim":  # the run reads the trimmed tokenizer's ids, the teachers theirs
            trimmed, meta["vocabulary"] = _trim(recipe, tokenizer, rows, out)
            meta.update({"vocab_size": len(trimmed), "pad_id": _pad_id(trimmed)})
        for split in SPLITS:
            labels[split] = np.array([-1 if r.get("label") is None else r["label"] for r in rows[split]], np.int64)
            if student_tok is None:
                ids[split], weights[split] = tokenize_rows(tokenizer, rows[split], recipe.data.max_length)
                run_ids, run_weights = ids[split], weights[split]
                if trimmed is not None:
                    run_ids, run_weights = tokenize_rows(trimmed, rows[split], recipe.data.max_length)
                    if split == "train":  # the teachers read the student's tokens, position for position
                        own = ids[split]
                        ids[split] = Packed(np.load(out.kept_ids)[run_ids.values].astype(own.values.dtype),
                                            run_ids.offsets)
                        weights[split] = run_weights
                        meta["vocabulary"]["train_texts_resplit"] = _changed_rows(own, ids[split])
            else:  # the run reads the student's tokens; the teachers read theirs, aligned to the student's
                run_ids, run_weights, split_meta = _two_tokenizations(tokenizer, student_tok, rows[split],
                                                                      recipe.data.max_length, out, split, ids, weights)
                meta["cross_tokenizer"]["splits"][split] = split_meta
            run_ids.save(folder, out.ids_name(split))
            if run_weights is not None:
                np.save(out.weights(split), run_weights.values)
            np.save(out.labels(split), labels[split])
            lengths = run_ids.lengths()
            meta["splits"][split] = {"n": len(rows[split]), "tokens": int(lengths.sum()),
                                     "truncated": int((lengths >= recipe.data.max_length).sum()),
                                     "weighted": run_weights is not None}
        if student_tok is not None:
            mapping = vocab_map(tokenizer, student_tok)
            np.save(out.vocab_map, mapping)
            meta["cross_tokenizer"]["matched_tokens"] = int((mapping >= 0).sum())
        for i, cfg in enumerate(teacher_configs(recipe)):
            source = teacher_source(recipe, ctx.run_dir, i)
            if cfg.server and task.kind.is_lm and any(needs_of(c.name) == "logits" for c in recipe.distill.losses):
                if rank == 0:
                    meta["teachers"].append(_served_teacher(recipe, cfg, ctx, tokenizer, ids, out, i, live))
                if processes:
                    processes.wait_for_everyone()
                continue
            model = task.load_model(source)
            hidden = tuple(hidden_layers_needed(recipe, i)[1])
            # the held-out split keeps the target's log-prob (the teacher's perplexity), no training loss reads it
            spec = CacheSpec(hidden_layers=hidden, top_k=cfg.top_k, temperatures=tuple(logit_temperatures(recipe)),
                             values=cfg.cache_values, target=False)
            test_spec = CacheSpec(top_k=cfg.top_k, temperatures=spec.temperatures, values=cfg.cache_values)
            levels = cache_teacher(task, model, ids, weights, labels, out, i, meta_task=meta_task, pad_id=pad_id,
                                   batch_size=cfg.batch_size, progress=ctx.progress, name=f"teacher {i}",
                                   spec_by_split={"train": _train_spec(recipe, spec, live), "test": test_spec},
                                   share=(rank, world), shards=shards if rank == 0 else [],
                                   barrier=processes.wait_for_everyone if processes else None)
            meta["teachers"].append({"model": cfg.model, "path": str(source.path), "class": type(model).__name__,
                                     "hidden_size": getattr(model.config, "hidden_size", None),
                                     "params": sum(p.numel() for p in model.parameters()), "fields": levels,
                                     "bytes_per_token": bytes_per_token(out, i, levels),
                                     "top_k": cfg.top_k if "topk_indices" in levels else None,
                                     "hidden_layers": list(hidden), "weight": cfg.weight,
                                     "num_labels": getattr(model.config, "num_labels", None) if task.label_kind == "class" else None})
            del model
        if rank > 0:
            return  # the first process has copied this process's share; it writes the cache's meta
        write_json(out.meta, meta)
    shutil.rmtree(shard_root, ignore_errors=True)
    if target is not None:
        with atomic_dir(files.teacher_cache.path) as out:
            write_json(CacheFiles(out).meta, {**meta, "shared": str(target), "reused": False})
