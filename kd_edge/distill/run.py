"""The ``distill`` stage: train the student against the teacher(s).

Reads student_init/ and teacher_cache/, writes student/ (the distilled model, save_pretrained) and
train/metrics.jsonl (+ train/summary.json). Checkpoints go to train/checkpoints/ every
``distill.checkpoint_every`` steps; a run stopped mid-way continues from the newest one whose stage
key matches. In mutual mode the co-trained teacher is saved to train/teacher/.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import numpy as np

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.distill import needs_attention_maps
from kd_edge.errors import ArtifactError
from kd_edge.teachers import teacher_configs, teacher_source
from kd_edge.runfiles import CacheReader, RunFiles, student_meta
from kd_edge.tasks import TASKS
from kd_edge.tasks.kinds import ModelSource

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def dev_split(n: int, dev_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, dev indices) of the training set."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_dev = int(dev_size) if dev_size >= 1 else max(1, round(n * dev_size))
    return np.sort(order[n_dev:]), np.sort(order[:n_dev])


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Distill student_init/ into student/."""
    files = RunFiles(ctx.run_dir)
    train_student(recipe, ctx, files.student, files.train)


def train_student(recipe: "Recipe", ctx: StageContext, student_dir, train, name: str = "distill") -> None:
    """Train student_init/ on ``recipe.distill`` into ``student_dir``, its metrics, summary and
    checkpoints in ``train`` (a TrainFiles), its progress bar called ``name``: the distill stage's, and
    the baseline's (distill/baseline.py)."""
    import torch

    from kd_edge.distill.callbacks import EarlyStoppingCallback, MetricsFileCallback, ProgressCallback
    from kd_edge.distill.objective import Objective
    from kd_edge.distill.students import save_student
    from kd_edge.distill.trainer import Trainer

    d = recipe.distill
    files = RunFiles(ctx.run_dir)
    task = TASKS.get(recipe.task)()
    cache = CacheReader(ctx.run_dir)
    init_dir = files.student_init
    init_meta = student_meta(init_dir)
    attentions = needs_attention_maps(l.name for l in d.losses)  # eager attention: SDPA returns no maps
    model = task.load_model(ModelSource(init_dir), eager=attentions)
    tokenizer = task.load_tokenizer(ModelSource(init_dir))
    if len(tokenizer) != cache.meta["vocab_size"]:
        raise ArtifactError(f"student tokenizer has {len(tokenizer)} tokens but the teacher cache was made with "
                            f"{cache.meta['vocab_size']}; rebuild the run with --force")
    torch.manual_seed(recipe.seed)
    if d.freeze_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
    teachers = None
    if d.mode != "offline":
        teachers = [task.load_model(teacher_source(recipe, ctx.run_dir, i), eager=attentions and i == 0)
                    for i in range(len(teacher_configs(recipe)))]
    n = cache.meta["splits"]["train"]["n"]
    train_idx, dev_idx = dev_split(n, d.dev_size, recipe.seed) if d.eval_every else (np.arange(n), None)
    meta = {"pooling": init_meta.get("pooling"), "normalize": init_meta.get("normalize")}
    objective = Objective(recipe, task, model, meta, cache, teachers, dev_idx)
    callbacks = [ProgressCallback(ctx.progress, name), MetricsFileCallback(train.metrics)]
    if d.eval_every:
        callbacks.append(EarlyStoppingCallback(task.kind.dev_metric, task.higher_is_better, d.early_stopping_patience))
    trainer = Trainer(objective, train_idx, d, seed=recipe.seed, checkpoint_dir=train.checkpoints, key=ctx.key,
                      callbacks=callbacks, param_groups=objective.param_groups(d.lr, d.teacher_lr),
                      evaluate_fn=objective.evaluate_dev if d.eval_every else None)
    if d.quantization_aware:  # the last share of the steps, known once the trainer has sized the run
        from kd_edge.distill.qat import QuantizationAwareCallback

        q = d.quantization_aware
        start = trainer.max_steps - max(1, round(q.share * trainer.max_steps))
        trainer.callbacks.append(QuantizationAwareCallback(model, start, q.bits, q.block_size))
    state = trainer.train(resume=not ctx.fresh)
    if not trainer.accelerator.is_main_process:
        return
    best = d.eval_every is not None and trainer.load_best()
    final = trainer.unwrapped_model()
    with atomic_dir(student_dir) as out:
        saved = {**init_meta, "distilled_steps": state.step, "best_step": state.best_step if best else None}
        save_student(final.student.eval(), tokenizer, saved, out)
        task.save_for_libraries(out, final.student, saved)
    if d.mode == "mutual":
        with atomic_dir(train.mutual_teacher) as out:
            final.live[0].eval().save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
    write_json(train.summary, {
        "steps": state.step, "max_steps": state.max_steps, "epochs": round(state.epoch, 3),
        "samples_seen": state.samples_seen, "resumed_from_step": state.resumed_from,
        "stopped_early": state.stopped_early, "best_step": state.best_step, "best_dev_metric": state.best_metric,
        "kept": "best" if best else "last", "final": state.log_history[-1] if state.log_history else {},
    })
    shutil.rmtree(train.checkpoints, ignore_errors=True)
