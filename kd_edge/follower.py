"""Several processes on one run (`accelerate launch`, torchrun): every process but the first waits while
the first runs the stages before ``distill`` (they need one process), then trains with it."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.artifacts import StageContext, read_json
from kd_edge.errors import ArtifactError
from kd_edge.runfiles import RunFiles

if TYPE_CHECKING:
    from kd_edge.config import Recipe


FOLLOW_POLL_S = 0.2


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process as set by `accelerate launch` / torchrun; (0, 1) alone."""
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


def follow_distill(recipe: "Recipe", out_dir: Path, *, progress: bool, force: bool,
                   grace_s: float = 60.0) -> tuple[list[str], list[str]]:
    """What every process but the first does under `accelerate launch`: wait while the first process
    runs the stages before ``distill`` (they need one process), then train with it, then stop.

    It trains when the first process marks ``distill`` as running after this process started (an
    older mark is a stopped run's), leaves when the first process has passed ``distill`` (done or
    up to date), and fails when the first process failed or holds the run no more. Returns (stages ran, stages skipped).
    """
    started = time.time() - 1
    files = RunFiles(out_dir)
    manifest = files.manifest
    while True:
        stages = read_json(manifest).get("stages", {}) if manifest.is_file() else {}
        record = stages.get("distill") or {}
        fresh = max(record.get("started_at", 0), record.get("checked_at", 0)) >= started
        if record.get("status") == "running" and record.get("started_at", 0) >= started:
            from kd_edge.stages import stage

            stage("distill").run(recipe, StageContext(out_dir, record["key"], progress=False, fresh=force))
            return ["distill"], []
        if record.get("status") == "done" and fresh:
            return [], ["distill"]
        failed = [n for n, r in stages.items() if r.get("status") in ("failed", "interrupted")
                  and r.get("started_at", 0) >= started]
        if failed:
            raise ArtifactError(f"the first process failed in stage '{failed[0]}'; see its output")
        if time.time() - started > grace_s and _lock_free(files.lock):
            raise ArtifactError(f"the first process is not running in {out_dir}; start all processes together "
                                "(accelerate launch)")
        time.sleep(FOLLOW_POLL_S)
