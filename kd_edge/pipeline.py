"""The pipeline: the only module that knows the stage order.

It owns the run folder and its ``manifest.json``. For each stage the manifest records a key (a digest
of the stage's recipe sections, of the files it reads from outside the run, and of its upstream
stages' outputs), its outputs with their digests, timings and status. A stage whose key is unchanged
and whose outputs are intact is skipped: a stopped run resumes where it stopped, and running a
finished recipe again does nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import importlib
import os
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from kd_edge import __version__, artifacts
from kd_edge.artifacts import (StageContext, digest_records, digest_tree, file_records, read_json,
                               remove_leftovers, sha256_json, write_json, write_text)
from kd_edge.config import Recipe, recipe_to_yaml
from kd_edge.diskspace import check_free_space
from kd_edge.errors import ArtifactError, ConfigError, KdEdgeError, from_os_error

MANIFEST = "manifest.json"
RESOLVED = "recipe.resolved.yaml"
LIBRARIES = ("torch", "transformers", "accelerate", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert",
             "numpy", "scikit-learn")


def _teachers(recipe: Recipe) -> dict[str, Path]:
    from kd_edge.preflight import resolve_teacher, teacher_configs

    return {f"teacher{i}": resolve_teacher(cfg) for i, cfg in enumerate(teacher_configs(recipe))}


def _primary_teacher(recipe: Recipe) -> dict[str, Path]:
    from kd_edge.preflight import resolve_teacher

    return {"teacher0": resolve_teacher(recipe.teacher)}


def _data(recipe: Recipe) -> dict[str, Path]:
    from kd_edge.data.loaders import source_path

    return {"data": source_path(recipe.data.source)}


def _bench_inputs(recipe: Recipe) -> dict[str, Path]:
    return _primary_teacher(recipe) if recipe.bench.teacher and recipe.teacher.prepare_head is None else {}


def _cached(recipe: Recipe) -> dict[str, Any]:
    from kd_edge.preflight import hidden_layers_needed, logit_temperatures, teacher_configs

    return {"teacher_hidden_layers": [hidden_layers_needed(recipe, i)[1] for i in range(len(teacher_configs(recipe)))],
            "temperatures": logit_temperatures(recipe) if recipe.task == "causal_lm" else None}


def _generates(recipe: Recipe) -> bool:
    d = recipe.distill
    return bool(d.augment or d.generate or (d.rationale and d.rationale.source == "teacher"))


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline."""

    name: str
    target: str  # "module:function", imported only when the stage runs
    outputs: tuple[str, ...]  # files or folders it writes, relative to the run folder
    needs: tuple[str, ...] = ()  # upstream stages whose outputs it reads
    sections: tuple[str, ...] = ()  # dotted recipe keys its behaviour depends on
    external: Callable[[Recipe], dict[str, Path]] | None = None  # files it reads from outside the run
    summary: str = ""
    derived: Callable[[Recipe], dict[str, Any]] | None = None  # key parts computed from the recipe
    enabled: Callable[[Recipe], bool] | None = None  # stages a recipe does not use are left out


STAGES: tuple[Stage, ...] = (
    Stage("data", "kd_edge.data.run:run", ("data",), (), ("task", "data", "seed", "distill.rationale", "evaluate.slices"), _data,
          "read, filter and split the text"),
    Stage("prepare", "kd_edge.distill.prepare:run", ("teacher",), ("data",),
          ("task", "seed", "teacher.prepare_head", "data.max_length"), _primary_teacher,
          "fit the teacher's classification head", enabled=lambda r: r.teacher.prepare_head is not None),
    Stage("generate", "kd_edge.distill.generate:run", ("generated",), ("data", "prepare"),
          ("task", "seed", "distill.augment", "distill.generate", "distill.rationale", "teacher.batch_size"),
          _primary_teacher, "make training data from the teacher", enabled=_generates),
    Stage("teacher", "kd_edge.distill.cache:run", ("teacher_cache",), ("data", "prepare", "generate"),
          ("task", "teacher", "ensemble", "data.max_length", "distill.mode"), _teachers,
          "tokenize once and cache the teachers' outputs", derived=_cached),
    Stage("student", "kd_edge.distill.students:run", ("student_init",), ("prepare",),
          ("task", "seed", "teacher", "ensemble", "student"), _teachers, "build the student and check its tokenizer"),
    Stage("distill", "kd_edge.distill.run:run", ("student", "train/metrics.jsonl", "train/summary.json"),
          ("teacher", "student", "prepare"), ("task", "seed", "distill", "ensemble"), _teachers,
          "train the student on the teachers' outputs"),
    Stage("evaluate", "kd_edge.evaluate.run:run", ("eval",), ("teacher", "distill"), ("task", "seed", "evaluate"), None,
          "teachers and student on held-out data"),
    Stage("export", "kd_edge.export.run:run", ("artifacts",), ("teacher", "distill", "evaluate"),
          ("task", "seed", "export", "verify", "bench.threads"), None,
          "ONNX / TFLite files, quantized as asked"),
    Stage("verify", "kd_edge.verify.run:run", ("verify",), ("teacher", "evaluate", "export"),
          ("verify", "bench.threads"), None, "parity and task metrics of every file in its runtime"),
    Stage("bench", "kd_edge.bench.run:run", ("bench",), ("prepare", "distill", "export"), ("seed", "bench"),
          _bench_inputs, "latency and memory on the target, fresh process per model"),
    Stage("report", "kd_edge.report.run:run", ("report.json", "report.md", "report.html"),
          ("data", "distill", "evaluate", "verify", "bench"), ("name", "report", "gate"), None,
          "report.json, report.md, report.html"),
    Stage("gate", "kd_edge.gate:run", ("gate.json",), ("report",), ("gate",), None, "check the budgets"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise ConfigError(f"unknown stage '{name}'; stages are: {', '.join(STAGE_NAMES)}")


@dataclass
class StageEvent:
    """What the pipeline reports to its caller as it goes (the CLI prints these)."""

    stage: Stage
    index: int
    total: int
    status: str  # "skipped" | "running" | "done" | "failed"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class RunResult:
    """The outcome of a pipeline run."""

    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    gate: dict | None = None


def _section(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a run depends on (no imports)."""
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


class RunDir:
    """A run folder and its manifest."""

    def __init__(self, path: Path, *, fresh: bool = False):
        self.path = path
        self.manifest_path = path / MANIFEST
        self.manifest: dict[str, Any] = {}
        if self.manifest_path.is_file():
            try:
                self.manifest = read_json(self.manifest_path)
            except (ValueError, UnicodeDecodeError) as e:
                if not fresh:
                    raise ArtifactError(f"{self.manifest_path} is damaged ({type(e).__name__}), so nothing in {path} "
                                        "can be trusted; pass --force to redo every stage there, or choose another "
                                        "--out") from None
            if not isinstance(self.manifest, dict):
                if not fresh:
                    raise ArtifactError(f"{self.manifest_path} is not a kd-edge manifest; pass --force to redo every "
                                        "stage there, or choose another --out")
                self.manifest = {}

    def save(self) -> None:
        """Write the manifest atomically."""
        write_json(self.manifest_path, self.manifest)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run folder: two commands never write one run at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArtifactError(f"another kd-edge command is using {self.path}; wait for it or choose another --out") from None
            yield

    def stage_record(self, name: str) -> dict[str, Any] | None:
        return self.manifest.get("stages", {}).get(name)

    def outputs_intact(self, record: dict[str, Any], st: Stage) -> bool:
        """True when every recorded output still exists with the recorded content (every file is read
        again: a file changed in place keeps its size and mtime only if someone wants it to)."""
        recorded = record.get("outputs") or {}
        if not all((self.path / rel).exists() for rel in st.outputs):
            return False
        try:
            now = file_records(self.path, list(st.outputs))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return {k: v["sha256"] for k, v in now.items()} == {k: v["sha256"] for k, v in recorded.items()}


def check_out_dir(run: RunDir, recipe_digest: str, *, resume: bool, force: bool) -> None:
    """Refuse to write into a folder holding something else than this run."""
    path = run.path
    if not path.exists() or not any(p for p in path.iterdir() if p.name != ".lock"):
        return
    if not run.manifest:
        if force and run.manifest_path.is_file():
            return  # a damaged manifest of ours: --force starts it again
        raise ConfigError(f"--out {path} is not empty and holds no kd-edge run ({MANIFEST} missing); "
                          "choose a new or empty folder")
    if run.manifest.get("recipe_digest") != recipe_digest and not (resume or force):
        raise ConfigError(f"--out {path} holds a run of a different recipe ('{run.manifest.get('name')}', or the same "
                          "one edited); pass --resume to keep its still-valid stages, --force to redo every stage, "
                          "or choose another --out")


def run_pipeline(recipe: Recipe, out_dir: Path, *, resume: bool = False, force: bool = False,
                 stop_after: str | None = None, only: tuple[str, ...] | None = None, progress: bool = True,
                 on_event: Callable[[StageEvent], None] | None = None) -> RunResult:
    """Run the stages of a resolved recipe into ``out_dir``, skipping those already done.

    ``stop_after`` ends the run after that stage; ``only`` restricts which stages may run (the
    others must already be done). ``force`` reruns every selected stage from scratch.
    """
    emit = on_event or (lambda e: None)
    rank, world = distributed_rank()
    if world > 1 and rank > 0:
        return follow_distill(recipe, out_dir, progress=progress, force=force)
    run = RunDir(out_dir, fresh=force)
    data = recipe.model_dump(mode="json")
    recipe_digest = sha256_json(data)
    check_out_dir(run, recipe_digest, resume=resume, force=force)
    last = STAGE_NAMES.index(stop_after) if stop_after else len(STAGES) - 1
    active = [st for st in STAGES[:last + 1] if st.enabled is None or st.enabled(recipe)]
    active_names = {st.name for st in active}
    result = RunResult(out_dir)
    with run.lock():
        remove_leftovers(out_dir)  # what stages killed with SIGKILL left behind
        m = run.manifest
        m.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        m.update({"name": recipe.name, "kd_edge_version": __version__, "recipe_digest": recipe_digest,
                  "versions": library_versions()})
        from kd_edge.device_runner import fingerprint

        m["machine"] = fingerprint(None)
        m.setdefault("stages", {})
        m.setdefault("external", {})
        write_text(out_dir / RESOLVED, recipe_to_yaml(recipe))
        run.save()
        for index, st in enumerate(active):
            record = run.stage_record(st.name)
            inputs: dict[str, str] = {}
            for ext_name, ext_path in (st.external(recipe) if st.external else {}).items():
                digest, records = digest_tree(ext_path, m["external"].get(str(ext_path)))
                m["external"][str(ext_path)] = records
                inputs[f"{ext_name}:{ext_path}"] = digest
            for up in (u for u in st.needs if u in active_names or u not in STAGE_NAMES):
                up_record = run.stage_record(up)
                if not up_record or up_record.get("status") != "done":
                    raise ArtifactError(f"stage '{st.name}' needs '{up}', which has not run in {out_dir}; "
                                        f"run `kd-edge run` on the recipe first")
                inputs[up] = digest_records(up_record["outputs"])
            config = {s: _section(data, s) for s in st.sections}
            if st.derived:
                config.update(st.derived(recipe))
            key = sha256_json({"stage": st.name, "version": __version__, "config": config, "inputs": inputs})
            selected = only is None or st.name in only
            done = (record and record.get("status") == "done" and record.get("key") == key
                    and run.outputs_intact(record, st))
            if done and not (force and selected):
                record["checked_at"] = time.time()  # processes waiting under accelerate launch read this
                run.save()
                result.skipped.append(st.name)
                emit(StageEvent(st, index, len(active), "skipped"))
                continue
            if not selected:
                raise ArtifactError(f"stage '{st.name}' in {out_dir} is out of date or missing; "
                                    f"run `kd-edge run` on the recipe to bring it up to date")
            m["stages"][st.name] = {"status": "running", "key": key, "config": config, "inputs": inputs,
                                    "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                    "started_at": time.time(), "processes": world}
            run.save()
            emit(StageEvent(st, index, len(active), "running"))
            module_name, func = st.target.split(":")
            t0 = time.perf_counter()
            try:
                check_free_space(st.name, recipe, out_dir)
                artifacts.FAULT_ARMED = os.environ.get("KD_EDGE_FAULT_STAGE") == st.name  # tests only
                getattr(importlib.import_module(module_name), func)(
                    recipe, StageContext(out_dir, key, progress=progress, fresh=force))
                artifacts.FAULT_ARMED = False
            except BaseException as e:
                interrupted = isinstance(e, (KeyboardInterrupt, SystemExit))
                m["stages"][st.name].update({"status": "interrupted" if interrupted else "failed",
                                             "error": f"{type(e).__name__}: {e}"[:500],
                                             "seconds": round(time.perf_counter() - t0, 2)})
                run.save()
                emit(StageEvent(st, index, len(active), "failed", time.perf_counter() - t0, str(e)))
                # no space, permission, ... (a library's own way of saying a full disk is turned into
                # ENOSPC by the atomic writers): one line naming the stage and the path
                err = from_os_error(e) if isinstance(e, OSError) and not isinstance(e, KdEdgeError) else None
                if err is not None:
                    raise type(err)(f"stage '{st.name}' stopped: {err}; its partial output was removed") from e
                raise
            seconds = time.perf_counter() - t0
            m["stages"][st.name].update({"status": "done", "seconds": round(seconds, 2),
                                         "outputs": file_records(out_dir, list(st.outputs))})
            run.save()
            result.ran.append(st.name)
            emit(StageEvent(st, index, len(active), "done", seconds))
        gate_file = out_dir / "gate.json"
        if stop_after is None and gate_file.is_file():
            result.gate = read_json(gate_file)
    return result


# -- several processes (accelerate launch) -------------------------------------------------------------------------
FOLLOW_POLL_S = 0.2


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process as set by `accelerate launch` / torchrun; (0, 1) alone."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _lock_free(path: Path) -> bool:
    """True when no process holds the run folder's lock."""
    if not path.is_file():
        return True
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def follow_distill(recipe: Recipe, out_dir: Path, *, progress: bool, force: bool,
                   grace_s: float = 60.0) -> RunResult:
    """What every process but the first does under `accelerate launch`: wait while the first process
    runs the stages before ``distill`` (they need one process), then train with it, then stop.

    It trains when the first process marks ``distill`` as running after this process started (an
    older mark is a stopped run's), leaves when the first process has passed ``distill`` (done or
    up to date), and fails when the first process failed or holds the run no more.
    """
    started = time.time() - 1
    manifest = out_dir / MANIFEST
    while True:
        stages = read_json(manifest).get("stages", {}) if manifest.is_file() else {}
        record = stages.get("distill") or {}
        fresh = max(record.get("started_at", 0), record.get("checked_at", 0)) >= started
        if record.get("status") == "running" and record.get("started_at", 0) >= started:
            module_name, func = stage("distill").target.split(":")
            getattr(importlib.import_module(module_name), func)(
                recipe, StageContext(out_dir, record["key"], progress=False, fresh=force))
            return RunResult(out_dir, ran=["distill"])
        if record.get("status") == "done" and fresh:
            return RunResult(out_dir, skipped=["distill"])
        failed = [n for n, r in stages.items() if r.get("status") in ("failed", "interrupted")
                  and r.get("started_at", 0) >= started]
        if failed:
            raise ArtifactError(f"the first process failed in stage '{failed[0]}'; see its output")
        if time.time() - started > grace_s and _lock_free(out_dir / ".lock"):
            raise ArtifactError(f"the first process is not running in {out_dir}; start all processes together "
                                "(accelerate launch)")
        time.sleep(FOLLOW_POLL_S)
