"""The ``evaluate`` stage: teacher and distilled student on the held-out split, in PyTorch.

Writes eval/metrics.json (per model: parameters and task metrics), the probes fitted on each model's
train embeddings (JSON, no pickle), and the student's test embeddings, which ``verify`` compares every
exported file against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.runfiles import load_cache, split_arrays
from kd_edge.tasks import TASKS
from kd_edge.tasks.embedding_metrics import embedding_metrics, fit_probe

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write eval/: metrics.json, probe_teacher.json, probe_student.json, student_test.npy."""
    cfg = recipe.evaluate
    task = TASKS.get(recipe.task)()
    meta, _ = load_cache(ctx.run_dir)
    train_ids, teacher_train, train_labels = split_arrays(ctx.run_dir, "train")
    test_ids, teacher_test, test_labels = split_arrays(ctx.run_dir, "test")
    model = task.load_model(ctx.run_dir / "student")
    kw = dict(pad_id=meta["pad_id"], batch_size=cfg.batch_size, pooling=meta["pooling"],
              normalize=meta["normalize"], progress=ctx.progress)
    student_train, _ = task.embed(model, train_ids, desc="student train", **kw)
    student_test, _ = task.embed(model, test_ids, desc="student test", **kw)
    has_labels = cfg.probe and (train_labels >= 0).sum() >= 2 and len(np.unique(train_labels[train_labels >= 0])) >= 2
    results, probes = {}, {}
    for name, train_emb, test_emb, params in (
        ("teacher", teacher_train, teacher_test, meta["teacher_params"]),
        ("student", student_train, student_test, sum(p.numel() for p in model.parameters())),
    ):
        probe = None
        if has_labels:
            keep = train_labels >= 0
            probe = fit_probe(train_emb[keep], train_labels[keep], c=cfg.probe_c, seed=recipe.seed)
            probes[name] = probe
        results[name] = {"params": int(params),
                         **embedding_metrics(test_emb, teacher_test, test_labels, probe, cfg.knn_k)}
    with atomic_dir(ctx.run_dir / "eval") as out:
        for name, probe in probes.items():
            write_json(out / f"probe_{name}.json", probe)
        np.save(out / "student_test.npy", student_test)
        write_json(out / "metrics.json", {"knn_k": cfg.knn_k, "n_test": len(test_ids),
                                          "n_test_labelled": int((test_labels >= 0).sum()), "models": results})
