"""Several processes on one run (`accelerate launch`, torchrun): every process but the first waits while
the first runs the stages that need one process, and works with it on the others: ``teacher`` (each
process caches a share of the batches), ``distill``, then ``baseline`` when the recipe trains one
(``TRAINING_STAGES``)."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.artifacts import StageContext, read_json
from kd_edge.errors import ArtifactError
from kd_edge.runfiles import RunFiles

if TYPE_CHECKING:
    from kd_edge.config import Recipe


FOLLOW_POLL_S = 0.2
TRAINING_STAGES = ("teacher", "distill", "baseline")  # the stages every process runs together


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


def follow_training(recipe: "Recipe", out_dir: Path, *, progress: bool, force: bool, stop_after: str | None = None,
                    grace_s: float = 60.0) -> tuple[list[str], list[str]]:
    """What every process but the first does under `accelerate launch`: each training stage the run
    reaches (``TRAINING_STAGES``, enabled, not past ``stop_after``), in order, trained with the first
    process (``_follow``). Returns (stages ran, stages skipped)."""
    from kd_edge.stages import STAGE_NAMES, stage

    last = STAGE_NAMES.index(stop_after) if stop_after else len(STAGE_NAMES) - 1
    started = time.time() - 1
    ran: list[str] = []
    skipped: list[str] = []
    for name in TRAINING_STAGES:
        if STAGE_NAMES.index(name) <= last and stage(name).is_enabled(recipe):
            (ran if _follow(name, recipe, out_dir, started, force=force, grace_s=grace_s) else skipped).append(name)
    return ran, skipped


def _follow(name: str, recipe: "Recipe", out_dir: Path, started: float, *, force: bool, grace_s: float) -> bool:
    """Wait while the first process runs the stages before ``name``, then train it with it; False when
    the first process found it up to date.

    It trains when the first process marks ``name`` as running after this process started (an older
    mark is a stopped run's), leaves when the first process has passed it (done or up to date), and
    fails when the first process failed or holds the run no more."""
    files = RunFiles(out_dir)
    manifest = files.manifest
    while True:
        stages = read_json(manifest).get("stages", {}) if manifest.is_file() else {}
        record = stages.get(name) or {}
        fresh = max(record.get("started_at", 0), record.get("checked_at", 0)) >= started
        if record.get("status") == "running" and record.get("started_at", 0) >= started:
            from kd_edge.stages import stage

            stage(name).run(recipe, StageContext(out_dir, record["key"], progress=False, fresh=force))
            return True
        if record.get("status") == "done" and fresh:
            return False
        failed = [n for n, r in stages.items() if r.get("status") in ("failed", "interrupted")
                  and r.get("started_at", 0) >= started]
        if failed:
            raise ArtifactError(f"the first process failed in stage '{failed[0]}'; see its output")
        if time.time() - started > grace_s and _lock_free(files.lock):
            raise ArtifactError(f"the first process is not running in {out_dir}; start all processes together "
                                "(accelerate launch)")
        time.sleep(FOLLOW_POLL_S)
