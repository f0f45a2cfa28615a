"""The ``prepare`` stage (sequence classification): turn an encoder into a classifier teacher.

Loads the recipe's teacher encoder as ``AutoModelForSequenceClassification`` with a fresh head sized
to the data's labels, fits the head (and, with ``train_encoder``, the encoder) on the run's train
split with cross-entropy, and saves an ordinary sequence-classification folder to
``runs/<name>/teacher/`` that every later stage uses as the teacher.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.errors import ArtifactError
from kd_edge.teachers import resolve_teacher
from kd_edge.runfiles import PREPARE_META, RunFiles, read_jsonl
from kd_edge.tasks import TASKS
from kd_edge.tasks.kinds import ModelSource

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write runs/<name>/teacher/: the encoder with a trained classification head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from kd_edge.progress import Progress

    cfg = recipe.teacher.prepare_head
    task = TASKS.get(recipe.task)()
    base = ModelSource(resolve_teacher(recipe.teacher), recipe.teacher.gguf_file, recipe.teacher.trust_remote_code,
                       allow_pickle=recipe.teacher.allow_pickle)
    tokenizer = task.load_tokenizer(base)
    files = RunFiles(ctx.run_dir)
    rows = [r for r in read_jsonl(files.data.train) if r.get("label") is not None]
    labels = sorted({r["label"] for r in rows})
    if len(labels) < 2:
        raise ArtifactError("prepare_head needs at least two labels in the train split; check data.label_field")
    if labels != list(range(len(labels))):
        raise ArtifactError(f"labels must be 0..K-1 to train a head, got {labels[:10]}; map them first")
    torch.manual_seed(recipe.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base.path), num_labels=len(labels), trust_remote_code=base.trust_remote_code,
        use_safetensors=None if base.allow_pickle else True)
    if not cfg.train_encoder:
        for name, p in model.named_parameters():
            # the head of a BERT-like classifier is its pooler and classifier
            p.requires_grad_(name.startswith(("classifier", "pooler", "bert.pooler", "score")))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
    rng = np.random.default_rng(recipe.seed)
    model.train()
    bar = Progress(range(total), desc="prepare teacher head", unit="step", enabled=ctx.progress)
    order: np.ndarray = np.array([], dtype=int)
    losses = []
    for step in bar:
        pos = step % steps_per_epoch
        if pos == 0:
            order = rng.permutation(len(rows))
        idx = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        enc = tokenizer([rows[i]["text"] for i in idx], truncation=True, max_length=recipe.data.max_length,
                        padding=True, return_tensors="pt")
        y = torch.tensor([rows[i]["label"] for i in idx])
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
    model.eval()
    model.config.id2label = {i: str(i) for i in labels}
    model.config.label2id = {str(i): i for i in labels}
    with atomic_dir(files.prepared_teacher) as out:
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        write_json(out / PREPARE_META, {
            "base": str(base.path), "labels": labels, "steps": total, "train_examples": len(rows),
            "train_encoder": cfg.train_encoder, "final_loss": float(np.mean(losses[-20:])),
        })
