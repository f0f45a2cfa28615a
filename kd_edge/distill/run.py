"""The ``distill`` stage: train the student against the cached teacher outputs.

Reads student_init/ and teacher_cache/, writes student/ (the distilled model, save_pretrained), and
train/metrics.jsonl. Checkpoints go to train/checkpoints/ every ``distill.checkpoint_every`` steps; a run
stopped mid-way continues from the newest one whose stage key matches.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import numpy as np
import torch

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.data.packed import Packed, pad
from kd_edge.distill import LOSSES
from kd_edge.runfiles import load_cache, student_meta
from kd_edge.distill.callbacks import MetricsFileCallback, ProgressCallback
from kd_edge.distill.students import save_student
from kd_edge.distill.trainer import Trainer
from kd_edge.errors import ArtifactError
from kd_edge.preflight import hidden_layers_needed
from kd_edge.tasks import TASKS

if TYPE_CHECKING:
    from kd_edge.config import Recipe

def make_loss_fn(recipe: "Recipe", task, cache_dir, meta: dict):
    """Build ``loss_fn(model, idx, device) -> (loss, terms)`` over the cached train split."""
    s_layers, t_layers = hidden_layers_needed(recipe)
    ids = Packed.load(cache_dir, "train_ids")
    pooled = np.load(cache_dir / "train_pooled.npy", mmap_mode="r")
    hidden = {t: Packed(np.load(cache_dir / f"train_hidden_{t}.npy", mmap_mode="r"), ids.offsets) for t in t_layers}
    terms = [(loss, LOSSES.get(loss.name)) for loss in recipe.distill.losses]
    pad_id = meta["pad_id"]

    def loss_fn(model, idx, device):
        arr, mask = pad([ids[i] for i in idx], pad_id)
        batch = {"input_ids": torch.from_numpy(arr.astype(np.int64)).to(device),
                 "attention_mask": torch.from_numpy(mask).to(device)}
        teacher_out = {"pooled": torch.from_numpy(np.ascontiguousarray(pooled[idx])).to(device),
                       "hidden": {t: torch.from_numpy(pad([h[i] for i in idx])[0]).to(device) for t, h in hidden.items()}}
        student_out = task.forward(model, batch["input_ids"], batch["attention_mask"], pooling=meta["pooling"],
                                   normalize=meta["normalize"], hidden_layers=tuple(s_layers))
        total, logs = 0.0, {}
        for cfg, fn in terms:
            value = fn(student_out, teacher_out, batch, layer_map=cfg.layer_map)
            logs[f"loss_{cfg.name}"] = float(value.detach())
            total = total + cfg.weight * value
        return total, logs

    return loss_fn


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Distill student_init/ into student/."""
    task = TASKS.get(recipe.task)()
    meta, cache_dir = load_cache(ctx.run_dir)
    init_dir = ctx.run_dir / "student_init"
    init_meta = student_meta(init_dir)
    model = task.load_model(init_dir)
    tokenizer = task.load_tokenizer(init_dir)
    if len(tokenizer) != meta["vocab_size"]:
        raise ArtifactError(f"student tokenizer has {len(tokenizer)} tokens but the teacher cache was made with "
                            f"{meta['vocab_size']}; rebuild the run with --force")
    torch.manual_seed(recipe.seed)
    if recipe.distill.freeze_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
    train_dir = ctx.run_dir / "train"
    callbacks = [ProgressCallback(ctx.progress), MetricsFileCallback(train_dir / "metrics.jsonl")]
    trainer = Trainer(model, make_loss_fn(recipe, task, cache_dir, meta), meta["splits"]["train"]["n"],
                      recipe.distill, seed=recipe.seed, checkpoint_dir=train_dir / "checkpoints",
                      key=ctx.key, callbacks=callbacks)
    state = trainer.train(resume=not ctx.fresh)
    if not trainer.accelerator.is_main_process:
        return
    model = trainer.unwrapped_model().eval()
    with atomic_dir(ctx.run_dir / "student") as out:
        save_student(model, tokenizer, {**init_meta, "distilled_steps": state.step}, out)
    write_json(train_dir / "summary.json", {
        "steps": state.step, "epochs": round(state.epoch, 3), "samples_seen": state.samples_seen,
        "resumed_from_step": state.resumed_from, "final": state.log_history[-1] if state.log_history else {},
    })
    shutil.rmtree(train_dir / "checkpoints", ignore_errors=True)
