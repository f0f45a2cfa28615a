"""A run stopped anywhere continues where it stopped and ends as an uninterrupted run would.

SIGKILL is sent in every stage, at the worst moment: its output complete in a temporary folder but not
yet renamed into place (the fault point in kd_edge/artifacts.py, armed by KD_EDGE_FAULT_STAGE; a
no-op otherwise). The run is stopped ten times, once per stage (in `report` by Ctrl-C, which must
print the command that continues and exit 130), then finished; every output that does not hold a
time measurement is then byte-identical to an uninterrupted run's, and no temporary folder is left.
A killed `kd-edge bench` takes its device runner with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path



KD_EDGE = [sys.executable, "-m", "kd_edge"]
STAGES = ("data", "teacher", "student", "distill", "evaluate", "export", "verify", "bench", "report", "gate")
# Files that hold time measurements, which two runs never share: latencies (bench/), the report and gate
# built on them, export/verify durations and tokens per second (sidecars, verify records), the manifest's
# timings, logs, the model card (it quotes the report). The training records, the sidecars and the
# verify records are compared without their speed and duration fields (samples per second, export seconds).
TIMED = ("bench/", "report.", "gate.json", "manifest.json", "logs/", "student/README.md")


def _without_timings(value):
    """A JSON value with its speed and duration fields removed (samples per second...)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not ("per_s" in k or "seconds" in k)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _digests(run: Path) -> dict[str, str]:
    """sha256 of every file; of the training records (losses per step, beside their speed), the
    digest of their content without the speed."""
    out = {}
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(run).as_posix()
        if not f.is_file() or f.name == ".lock":
            continue
        data = f.read_bytes()
        if rel.startswith(("train/", "artifacts/", "verify/")) and f.suffix in (".json", ".jsonl"):
            records = [json.loads(line) for line in data.decode().splitlines() if line.strip()] \
                if f.suffix == ".jsonl" else json.loads(data)
            data = json.dumps(_without_timings(records), sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def _untimed(digests: dict[str, str]) -> dict[str, str]:
    return {rel: d for rel, d in digests.items() if not rel.startswith(TIMED)}


def _wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before reaching {marker.name}"
        assert time.time() < deadline, f"no {marker.name} after {timeout} s"
        time.sleep(0.05)


def _start(recipe: Path, out: Path, stage: str, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "KD_EDGE_FAULT_STAGE": stage, "KD_EDGE_FAULT_MARKER": str(marker)}
    return subprocess.Popen([*KD_EDGE, "run", str(recipe), "--out", str(out), "-q"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_in_every_stage_resumes_bit_identical_and_leaves_no_temporary(tmp_path, finished_run):
    recipe, reference, _ = finished_run  # the same recipe, run without a stop
    out = tmp_path / "killed"
    for stage in STAGES:
        marker = tmp_path / f"{stage}.marker"
        proc = _start(recipe, out, stage, marker)
        _wait_for(marker, proc)
        if stage == "report":  # Ctrl-C instead: the stage cleans up itself, and says how to go on
            os.killpg(proc.pid, signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 130, stderr
            assert "interrupted; run the same command again to continue where it stopped: kd-edge run" in stderr
            assert "Traceback" not in stderr and stderr.strip().count("\n") == 0, stderr
            assert json.loads((out / "manifest.json").read_text())["stages"][stage]["status"] == "interrupted"
            assert not [f for f in out.rglob("*") if ".tmp-" in f.name], "an interrupted stage removes its output"
            continue
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["stages"][stage]["status"] == "running", (stage, manifest["stages"][stage])
        assert any(".tmp-" in f.name for f in out.rglob("*")), f"{stage}: killed with its output not yet in place"
    p = subprocess.run([*KD_EDGE, "run", str(recipe), "--out", str(out), "-q"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not [f for f in out.rglob("*") if ".tmp-" in f.name], "temporary outputs of killed stages were removed"
    assert all(s["status"] == "done" for s in json.loads((out / "manifest.json").read_text())["stages"].values())
    ref, got = _untimed(_digests(reference)), _untimed(_digests(out))
    assert ref.keys() == got.keys(), set(ref) ^ set(got)
    different = sorted(k for k in ref if ref[k] != got[k])
    assert not different, different
    assert any(k.endswith(".onnx") for k in ref) and any(k.startswith("student/") for k in ref)


def _runner_pids(parent: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and any(c.endswith(b"device_runner.py") for c in cmd):
            pids.append(int(proc.name))
    return pids


def test_a_killed_bench_takes_its_device_runner_with_it(tmp_path, tiny_teacher):
    from kd_edge.export import EXPORTERS
    from kd_edge.tasks import TASKS

    task = TASKS.get("sentence_embedding")()
    module = task.export_module(task.load_model(tiny_teacher), {"pooling": "mean", "normalize": True})
    onnx = tmp_path / "model.onnx"
    EXPORTERS.get("onnx")().export(module, onnx, input_names=task.input_names, output_name="output", opset=17)
    proc = subprocess.Popen([*KD_EDGE, "bench", str(onnx), "--runs", "10000000", "--rounds", "1", "--seq", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (runners := _runner_pids(proc.pid)):
        assert proc.poll() is None and time.time() < deadline, "no device runner started"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as an OOM killer or a closed CI job would
    proc.wait()
    deadline = time.time() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in runners):
        assert time.time() < deadline, f"the device runner {runners} outlived its kd-edge"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
