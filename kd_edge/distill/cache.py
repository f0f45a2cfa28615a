"""The ``teacher`` stage: tokenize the data once and cache the teacher's outputs on it.

The cache (``teacher_cache/``) holds, per split, the token ids the whole run uses, the teacher's pooled
embeddings (fp32) and, for the train split, the hidden states the losses read (fp16, memory-mapped).
Its ``meta.json`` records the stage key (a digest of the teacher's files, the data and what is cached);
every later stage is keyed on the cache's digest, so a cache made for another teacher or other data
is never reused silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.data.packed import Packed
from kd_edge.runfiles import read_jsonl
from kd_edge.preflight import hidden_layers_needed, teacher_dir
from kd_edge.tasks import TASKS

if TYPE_CHECKING:
    from kd_edge.config import Recipe

SPLITS = ("train", "test")


def tokenize(tokenizer, texts: list[str], max_length: int) -> Packed:
    """Token ids of each text (special tokens added, truncated, unpadded)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    return Packed.from_lists(enc["input_ids"])


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write teacher_cache/: ids, pooled embeddings and mapped hidden states of the teacher."""
    task = TASKS.get(recipe.task)()
    tdir = teacher_dir(recipe)
    tokenizer = task.load_tokenizer(tdir, trust_remote_code=recipe.teacher.trust_remote_code)
    model = task.load_model(tdir, trust_remote_code=recipe.teacher.trust_remote_code)
    _, t_layers = hidden_layers_needed(recipe)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    meta = {
        "key": ctx.key, "teacher": str(tdir), "teacher_class": type(model).__name__,
        "teacher_params": sum(p.numel() for p in model.parameters()),
        "tokenizer_class": type(tokenizer).__name__, "vocab_size": len(tokenizer), "pad_id": pad_id,
        "max_length": recipe.data.max_length, "pooling": recipe.teacher.pooling,
        "normalize": recipe.teacher.normalize, "hidden_layers": t_layers, "splits": {},
    }
    with atomic_dir(ctx.run_dir / "teacher_cache") as out:
        for split in SPLITS:
            rows = read_jsonl(ctx.run_dir / "data" / f"{split}.jsonl")
            ids = tokenize(tokenizer, [r["text"] for r in rows], recipe.data.max_length)
            ids.save(out, f"{split}_ids")
            layers = tuple(t_layers) if split == "train" else ()
            pooled, hidden = task.embed(model, ids, pad_id=pad_id, batch_size=recipe.teacher.batch_size,
                                    pooling=recipe.teacher.pooling, normalize=recipe.teacher.normalize,
                                    hidden_layers=layers, desc=f"teacher {split}", progress=ctx.progress)
            np.save(out / f"{split}_pooled.npy", pooled)
            for layer, packed in hidden.items():
                np.save(out / f"{split}_hidden_{layer}.npy", packed.values)
            labels = np.array([-1 if r["label"] is None else r["label"] for r in rows], np.int64)
            np.save(out / f"{split}_labels.npy", labels)
            meta["splits"][split] = {"n": len(rows), "tokens": int(ids.lengths().sum()),
                                     "truncated": int((ids.lengths() >= recipe.data.max_length).sum())}
        write_json(out / "meta.json", meta)
