"""The ``local`` target: run the device runner in a fresh subprocess on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typing import Literal

from pydantic import Field

from kd_edge.bench.targets.config import TargetConfig
from kd_edge.errors import TargetError


class LocalTargetConfig(TargetConfig):
    """This machine: a fresh subprocess per model."""

    label = "local"
    kind: Literal["local"] = "local"
    cpus: list[int] | None = Field(None, description="Pin the benchmark to these CPU cores.")

    def connect(self) -> "LocalTarget":
        return LocalTarget(name=self.name, cpus=self.cpus)


def parse_runner_output(stdout: str, where: str) -> dict:
    """The runner's JSON document: the last stdout line that parses as a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise TargetError(f"the runner on {where} printed no result; run it by hand to see why")


PHASE_FIXES = {
    "import": "install the runtime there (pip install onnxruntime for .onnx, ai-edge-litert for .tflite, "
              "'kd-edge[gguf]' for .gguf)",
    "load": "the file may be truncated, or made by a newer converter than this runtime reads; export it again "
            "(kd-edge export) or update the runtime",
    "run": "the runtime loaded the file but cannot run it at this input; check bench.batch_size and "
           "bench.seq_len against the shapes the file was exported for",
}


def runner_failure(model: str, where: str, doc: dict) -> TargetError:
    """The one-line error for a runner that reported a failure: what failed, in which phase, the fix."""
    phase = doc.get("phase") or "run"
    return TargetError(f"{model} on {where} failed at {phase}: {doc['error']}; "
                       f"{PHASE_FIXES.get(phase, 'run the device runner by hand to see why')}",
                       keys=("bench.batch_size", "bench.seq_len") if phase == "run" else ())


class LocalTarget:
    """Subprocess on this machine with thread variables set (and optional CPU pinning)."""

    def __init__(self, python: str | None = None, cpus: list[int] | None = None, name: str = "local"):
        self.python = python or sys.executable
        self.cpus = cpus
        self.name = name

    def run(self, runner: Path, model: Path, args: list[str], *, threads: int | None, timeout_s: float) -> dict:
        """Run the runner on ``model``; return its JSON plus what the parent saw (wall time, maxrss)."""
        env = dict(os.environ)
        if threads:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(threads)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["KD_EDGE_PARENT_PID"] = str(os.getpid())  # the runner dies with this process
        cmd = [self.python, str(runner), str(model), *args]
        preexec = (lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                                preexec_fn=preexec, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TargetError(f"benchmark of {model.name} on {self.name} took longer than {timeout_s:g} s; "
                              "raise bench.timeout_s or lower bench.runs") from None
        wall = time.perf_counter() - t0
        # Peak memory comes from the runner's own VmHWM readings (per phase); the parent adds the
        # wall time of the whole process, start-up included.
        doc = parse_runner_output(stdout, self.name)
        if "error" in doc:
            raise runner_failure(model.name, self.name, doc)
        if proc.returncode != 0:
            last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
            raise TargetError(f"the runner for {model.name} exited with {proc.returncode}: {last}")
        doc["process_wall_s"] = round(wall, 3)
        doc["target"] = self.name
        return doc

    def close(self) -> None:
        return None
