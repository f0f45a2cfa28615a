"""The ``bench`` stage: latency and memory of the teacher, the student and every artifact on the
target, each in a fresh process. Writes bench/<model>@<target>.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.artifacts import StageContext, atomic_dir, read_json, write_json
from kd_edge.bench import RUNNER_PATH
from kd_edge.teachers import teacher_source
from kd_edge.runfiles import BenchFiles, RunFiles, load_cache
from kd_edge.tasks.kinds import task_kind

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def models_to_bench(recipe: "Recipe", run_dir: Path) -> list[dict]:
    """(row name, path, runtime) of everything the bench stage measures, baseline first."""
    models = []
    files = RunFiles(run_dir)
    kind = task_kind(recipe.task)
    torch_model = {"runtime": "torch", "pooling": recipe.teacher.pooling, "normalize": recipe.teacher.normalize,
                   "head": kind.runner_head, "auto_class": kind.auto_class}
    if recipe.bench.teacher:
        source = teacher_source(recipe, run_dir)
        models.append({"name": "teacher", "path": source.path, "gguf_file": source.gguf_file,
                       "allow_pickle": source.allow_pickle, **torch_model})
    if recipe.bench.student_torch:
        models.append({"name": "student", "path": files.student, **torch_model})
    for sidecar in files.artifacts.sidecars():
        info = read_json(sidecar)
        models.append({"name": info["name"], "path": files.artifacts.file(info["name"]), "runtime": info["runtime"]})
    return models


def runner_args(recipe: "Recipe", model: dict, vocab_size: int, threads: int | None = None) -> list[str]:
    """Command-line arguments of the device runner for one model (but ``--runs``: the rounds set it)."""
    cfg = recipe.bench
    threads = threads or cfg.threads
    args = ["--runtime", model["runtime"], "--batch", str(cfg.batch_size), "--seq", str(cfg.seq_len),
            "--warmup", str(cfg.warmup_runs), "--seed", str(recipe.seed), "--vocab-size", str(vocab_size)]
    if threads:
        args += ["--threads", str(threads)]
    if task_kind(recipe.task).is_lm:  # prompt processing and token generation as LLM users read them
        args += cfg.lm_runner_args()
    if model["runtime"] == "torch":
        args += ["--head", model["head"], "--auto-class", model["auto_class"]]
        if model["head"] == "pooled":
            args += ["--pooling", model["pooling"]] + (["--normalize"] if model["normalize"] else [])
        if model.get("gguf_file"):
            args += ["--gguf-file", model["gguf_file"]]
        if model.get("allow_pickle"):
            args += ["--allow-pickle"]
    return args


def torch_macs(recipe: "Recipe", ctx: StageContext) -> dict[str, int]:
    """MACs per inference of the teacher and the student at the benchmark's shape."""
    from kd_edge.bench.macs import count_macs
    from kd_edge.runfiles import student_meta
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.kinds import ModelSource

    task = TASKS.get(recipe.task)()
    student = RunFiles(ctx.run_dir).student
    meta = student_meta(student)
    out = {}
    for name, source in (("teacher", teacher_source(recipe, ctx.run_dir)), ("student", ModelSource(student))):
        out[name] = count_macs(task, task.load_model(source), meta, recipe.bench.batch_size, recipe.bench.seq_len)
    return out


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Benchmark every model on the recipe's target, in interleaved rounds."""
    from kd_edge.bench.profiles import make_target, profile_for
    from kd_edge.bench.rounds import Job, host_load, run_rounds, runs_per_round, steal_between
    from kd_edge.progress import Progress

    cfg = recipe.bench
    profile = profile_for(cfg)
    target = make_target(profile)
    threads = cfg.threads or profile.threads
    models = models_to_bench(recipe, ctx.run_dir)
    if profile.kind != "local":  # a device
        # PyTorch models are the baselines of this machine; the device runs the exported files
        models = [m for m in models if m["runtime"] != "torch"]
    cache_meta = load_cache(ctx.run_dir)[0]
    # random token ids every model can read (a student with its own tokenizer has another vocabulary)
    vocab_size = min(cache_meta["vocab_size"], cache_meta.get("cross_tokenizer", {}).get("teacher_vocab_size", 1 << 62))
    macs = torch_macs(recipe, ctx)
    jobs = [Job(m["name"], m["path"], runner_args(recipe, m, vocab_size, threads), threads) for m in models]
    try:
        with atomic_dir(RunFiles(ctx.run_dir).bench.path) as folder:
            out = BenchFiles(folder)
            write_json(out.macs, {"batch": recipe.bench.batch_size, "seq": recipe.bench.seq_len, "macs": macs})
            before = host_load()
            bar = Progress(total=len(jobs) * cfg.rounds, desc="bench", unit="process", enabled=ctx.progress)

            def step(job, r):
                bar.set_postfix_str(f"{job.name} (round {r + 1}/{cfg.rounds})")
                bar.update(1)

            docs = run_rounds(target, RUNNER_PATH, jobs, rounds=cfg.rounds, runs=cfg.runs, timeout_s=cfg.timeout_s,
                              on_step=step)
            bar.close()
            after = host_load()
            for doc in docs:
                write_json(out.record(doc["name"], target.name), doc)
            write_json(out.machine, {
                "rounds": cfg.rounds, "runs_per_round": runs_per_round(cfg.runs, cfg.rounds), "target": target.name,
                "host_loadavg_before": before["loadavg"], "host_loadavg_after": after["loadavg"],
                "host_steal_pct": steal_between(before, after),
                "unreliable": sorted(d["name"] for d in docs if not (d.get("reliability") or {}).get("reliable", True)),
            })
    finally:
        target.close()
