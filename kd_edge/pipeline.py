"""Run a recipe's stages into a run folder, skipping those whose outputs are still valid.

The stage table (order, inputs, recipe sections) is ``kd_edge/stages.py``; the manifest and the lock are
``kd_edge/manifest.py``; a stage's key (its code, its non-default recipe fields, its inputs) is
``kd_edge/stagekeys.py``; processes other than the first under `accelerate launch` follow
(``kd_edge/follower.py``). A stage whose key is unchanged and whose outputs are intact is skipped: a
stopped run resumes where it stopped, and running a finished recipe again does nothing.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kd_edge import __version__, artifacts
from kd_edge.artifacts import StageContext, digest_records, digest_tree, file_records, read_json, remove_leftovers, \
    sha256_json, write_text
from kd_edge.config import Recipe, recipe_to_yaml
from kd_edge.diskspace import check_free_space
from kd_edge.errors import ArtifactError, KdEdgeError, from_os_error
from kd_edge.artifacts import distributed_rank
from kd_edge.follower import follow_training
from kd_edge.manifest import RunDir, check_out_dir, library_versions
from kd_edge import stagekeys
from kd_edge.stagekeys import RecipeFields, code_modules, digest_of, stale_defaults
from kd_edge.stages import STAGE_NAMES, STAGES, Stage

KEY_FORMAT = 2  # 1: kd-edge version + every recipe field; 2: stage code + non-default fields (stagekeys.py)


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


def stage_key(run: RunDir, st: Stage, recipe: Recipe, fields: RecipeFields, active: set[str]) -> tuple[str, dict, dict]:
    """The key of stage ``st`` in this run; its parts as the manifest records them (the stage's code
    digest, its non-default recipe fields, the defaults it runs with, the digests of what it reads); and
    the modules its code digest covers."""
    m = run.manifest
    inputs: dict[str, str] = {}
    upstream: dict[str, str] = {}
    for ext_name, ext_path in (st.external(recipe) if st.external else {}).items():
        digest, records = digest_tree(ext_path, m["external"].get(str(ext_path)))
        m["external"][str(ext_path)] = records
        inputs[f"{ext_name}:{ext_path}"] = digest
    for up in (u for u in st.needs if u in active or u not in STAGE_NAMES):
        up_record = run.stage_record(up)
        if not up_record or up_record.get("status") != "done":
            raise ArtifactError(f"stage '{st.name}' needs '{up}', which has not run in {run.path}; "
                                "run `kd-edge run` on the recipe first")
        inputs[up] = digest_records(up_record["outputs"])
        upstream[up] = up_record["key"]
    config, defaults = fields.parts(st.sections)
    if st.derived:
        config.update(st.derived(recipe))
    modules = code_modules(st.code)
    code = digest_of(modules)
    key = sha256_json({"stage": st.name, "code": code, "config": config, "inputs": inputs, "upstream": upstream})
    return key, {"code": code, "config": config, "defaults": defaults, "inputs": inputs, "upstream": upstream}, modules


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
        ran, skipped = follow_training(recipe, out_dir, progress=progress, force=force, stop_after=stop_after)
        return RunResult(out_dir, ran=ran, skipped=skipped)
    run = RunDir(out_dir, fresh=force)
    fields = RecipeFields(recipe)
    recipe_digest = sha256_json(fields.explicit)
    check_out_dir(run, recipe_digest, resume=resume, force=force)
    last = STAGE_NAMES.index(stop_after) if stop_after else len(STAGES) - 1
    active = [st for st in STAGES[:last + 1] if st.is_enabled(recipe)]
    active_names = {st.name for st in active}
    result = RunResult(out_dir)
    with run.lock():
        remove_leftovers(out_dir)  # what stages killed with SIGKILL left behind
        m = run.manifest
        m.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        m.update({"name": recipe.name, "kd_edge_version": __version__, "recipe_digest": recipe_digest,
                  "key_format": KEY_FORMAT, "versions": library_versions()})
        from kd_edge.device_runner import fingerprint

        m["machine"] = fingerprint(None)
        m.setdefault("stages", {})
        m.setdefault("external", {})
        stagekeys.PARSED.update(m.get("parsed_code") or {})
        write_text(run.files.resolved_recipe, recipe_to_yaml(recipe))
        run.save()
        used: set[str] = set()  # the modules the stages' code digests cover (their parses are kept)
        for index, st in enumerate(active):
            record = run.stage_record(st.name)
            key, parts, modules = stage_key(run, st, recipe, fields, active_names)
            used.update(modules)
            selected = only is None or st.name in only
            done = (record and record.get("status") == "done" and record.get("key") == key
                    and not stale_defaults(record.get("defaults"), parts["defaults"])
                    and run.outputs_intact(record, st.outputs, st.foreign))
            if done and not (force and selected):
                record["checked_at"] = time.time()  # processes waiting under accelerate launch read this
                run.save()
                result.skipped.append(st.name)
                emit(StageEvent(st, index, len(active), "skipped"))
                continue
            if not selected:
                raise ArtifactError(f"stage '{st.name}' in {out_dir} is out of date or missing; "
                                    f"run `kd-edge run` on the recipe to bring it up to date")
            m["stages"][st.name] = {"status": "running", "key": key, **parts,
                                    "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                    "started_at": time.time(), "processes": world}
            run.save()
            emit(StageEvent(st, index, len(active), "running"))
            t0 = time.perf_counter()
            try:
                check_free_space(st.name, recipe, out_dir)
                artifacts.FAULT_ARMED = os.environ.get("KD_EDGE_FAULT_STAGE") == st.name  # tests only
                st.run(recipe, StageContext(out_dir, key, progress=progress, fresh=force))
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
                                         "outputs": file_records(out_dir, list(st.outputs), exclude=st.foreign)})
            run.save()
            result.ran.append(st.name)
            emit(StageEvent(st, index, len(active), "done", seconds))
        m["parsed_code"] = {k: v for k, v in stagekeys.PARSED.items() if k.split(":")[0] in used}
        run.save()
        gate_file = run.files.gate
        if stop_after is None and gate_file.is_file():
            result.gate = read_json(gate_file)
    return result

