"""The ``verify`` stage: prove each exported file equal to the PyTorch student.

For every artifact, on the held-out split and through the artifact's own runtime (``kd_edge/checks``):
an encoder's outputs on every text, a causal LM's logits as a prompt and token by token over its cache,
perplexity and greedy generation; |Δ| against the student in float64, task metrics, agreement, and a
pass/fail verdict by precision. Writes verify/<artifact>.json and verify/student.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kd_edge.artifacts import StageContext, atomic_dir, read_json, write_json
from kd_edge.checks.causal_lm import LMChecker
from kd_edge.checks.encoder import Checker
from kd_edge.export.capture import captured
from kd_edge.runfiles import CacheReader, RunFiles, VerifyFiles
from kd_edge.tasks.kinds import task_kind

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write verify/<artifact>.json for every artifact."""
    files = RunFiles(ctx.run_dir)
    sidecars = files.artifacts.sidecars()
    if not sidecars:
        with atomic_dir(files.verify.path) as out:
            write_json(VerifyFiles(out).student, {"name": "student", "note": "no exported files to verify"})
        return
    if task_kind(recipe.task).is_lm:  # token by token over the KV cache
        return _run_lm(recipe, ctx)
    checker = Checker(recipe, ctx.run_dir, limit=recipe.verify.max_examples)
    with atomic_dir(files.verify.path) as folder:
        out = VerifyFiles(folder)
        for sidecar in sidecars:
            info = read_json(sidecar)
            record = checker.measure(files.artifacts.file(info["name"]), info)
            if info.get("fallback"):
                record["fallback"] = {**{k: v for k, v in info["fallback"].items() if k != "nodes"},
                                      "nodes_in_float": len(info["fallback"].get("nodes", []))}
            write_json(out.record(info["name"]), record)
        write_json(out.student, {"name": "student", **checker.student})


def _run_lm(recipe: "Recipe", ctx: StageContext) -> None:
    """verify/<artifact>.json for every exported LM file, and verify/student.json."""
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.kinds import ModelSource

    ids_all = CacheReader(ctx.run_dir).ids("test")
    texts = [np.asarray(ids_all[i], np.int64) for i in range(len(ids_all)) if len(ids_all[i]) > 1]
    if recipe.verify.max_examples:
        texts = texts[:recipe.verify.max_examples]
    files = RunFiles(ctx.run_dir)
    model = TASKS.get(recipe.task)().load_model(ModelSource(files.student), eager=True).eval()
    checker = LMChecker(model, texts, recipe.bench.threads)
    with atomic_dir(files.verify.path) as folder:
        out = VerifyFiles(folder)
        for sidecar in files.artifacts.sidecars():
            info = read_json(sidecar)
            with captured(files.log(f"verify-{info['format']}")):  # runtimes announce themselves from C++
                record = checker.measure(files.artifacts.file(info["name"]), info, recipe.verify)
            if info.get("fallback"):
                record["fallback"] = {**{k: v for k, v in info["fallback"].items() if k != "nodes"},
                                      "nodes_in_float": len(info["fallback"].get("nodes", []))}
            write_json(out.record(info["name"]), record)
        write_json(out.student, {"name": "student", **checker.student})
