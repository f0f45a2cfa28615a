"""The ``bench`` stage: latency and memory of the teacher, the student and every artifact on the
target, each in a fresh process. Writes bench/<model>@<target>.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.artifacts import StageContext, atomic_dir, read_json, write_json
from kd_edge.bench import RUNNER_PATH
from kd_edge.errors import TargetError
from kd_edge.preflight import teacher_source
from kd_edge.runfiles import load_cache

if TYPE_CHECKING:
    from kd_edge.config import Recipe


RUNNER_TASK = {"sentence_embedding": "embedding", "sequence_classification": "classification", "causal_lm": "causal_lm"}


def models_to_bench(recipe: "Recipe", run_dir: Path) -> list[dict]:
    """(row name, path, runtime) of everything the bench stage measures, baseline first."""
    models = []
    torch_model = {"runtime": "torch", "pooling": recipe.teacher.pooling, "normalize": recipe.teacher.normalize,
                   "task": RUNNER_TASK[recipe.task]}
    if recipe.bench.teacher:
        source = teacher_source(recipe, run_dir)
        models.append({"name": "teacher", "path": source.path, "gguf_file": source.gguf_file, **torch_model})
    if recipe.bench.student_torch:
        models.append({"name": "student", "path": run_dir / "student", **torch_model})
    for sidecar in sorted((run_dir / "artifacts").glob("*.json")):
        info = read_json(sidecar)
        models.append({"name": info["name"], "path": run_dir / "artifacts" / info["name"], "runtime": info["runtime"]})
    return models


def runner_args(recipe: "Recipe", model: dict, vocab_size: int, threads: int | None = None) -> list[str]:
    """Command-line arguments of the device runner for one model."""
    cfg = recipe.bench
    threads = threads or cfg.threads
    args = ["--runtime", model["runtime"], "--batch", str(cfg.batch_size), "--seq", str(cfg.seq_len),
            "--warmup", str(cfg.warmup_runs), "--runs", str(cfg.runs), "--seed", str(recipe.seed),
            "--vocab-size", str(vocab_size)]
    if threads:
        args += ["--threads", str(threads)]
    if model["runtime"] == "torch":
        args += ["--task", model["task"]]
        if model["task"] == "embedding":
            args += ["--pooling", model["pooling"]] + (["--normalize"] if model["normalize"] else [])
        if model.get("gguf_file"):
            args += ["--gguf-file", model["gguf_file"]]
    return args


def torch_macs(recipe: "Recipe", ctx: StageContext) -> dict[str, int]:
    """MACs per inference of the teacher and the student at the benchmark's shape."""
    from kd_edge.bench.macs import count_macs
    from kd_edge.runfiles import student_meta
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.base import ModelSource

    task = TASKS.get(recipe.task)()
    meta = student_meta(ctx.run_dir / "student")
    out = {}
    for name, source in (("teacher", teacher_source(recipe, ctx.run_dir)), ("student", ModelSource(ctx.run_dir / "student"))):
        out[name] = count_macs(task, task.load_model(source), meta, recipe.bench.batch_size, recipe.bench.seq_len)
    return out


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Benchmark every model on the recipe's target."""
    from tqdm.auto import tqdm

    from kd_edge.bench.profiles import make_target, resolve_target

    cfg = recipe.bench
    profile = resolve_target(cfg.target, host=cfg.host, serial=cfg.serial)
    target = make_target(profile)
    threads = cfg.threads or profile.threads
    models = models_to_bench(recipe, ctx.run_dir)
    if profile.kind != "local":
        # PyTorch models are the baselines of this machine; the device runs the exported files
        models = [m for m in models if m["runtime"] != "torch"]
    vocab_size = load_cache(ctx.run_dir)[0]["vocab_size"]
    macs = torch_macs(recipe, ctx)
    with atomic_dir(ctx.run_dir / "bench") as out:
        write_json(out / "macs.json", {"batch": recipe.bench.batch_size, "seq": recipe.bench.seq_len, "macs": macs})
        bar = tqdm(models, desc="bench", unit="model", disable=not ctx.progress or None)
        for model in bar:
            bar.set_postfix_str(model["name"])
            try:
                doc = target.run(RUNNER_PATH, model["path"], runner_args(recipe, model, vocab_size, threads),
                                 threads=threads, timeout_s=cfg.timeout_s)
            except TargetError as e:
                # One model that cannot run on the target does not hide the others' figures: the
                # failure is recorded and shown in the report.
                doc = {"error": str(e), "runtime": model["runtime"], "target": target.name}
            doc["name"] = model["name"]
            write_json(out / f"{model['name']}@{_safe(target.name)}.json", doc)
    target.close()


def _safe(name: str) -> str:
    """A target name usable in a file name (user@host:port -> user_host_port)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
