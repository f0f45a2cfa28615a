"""The whole pipeline on the tiny teacher, through the real `kd-edge` command in fresh processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe_dict

KD_EDGE = [sys.executable, "-m", "kd_edge"]


def kd_edge(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*KD_EDGE, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)



def stages_run(stdout: str) -> list[str]:
    """Names of the stages a `kd-edge` command printed as running."""
    return [re.search(r"\]\s+(\w+)", line).group(1) for line in stdout.splitlines() if line.endswith(" ...")]


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def test_run_leaves_every_output(finished_run):
    _, run, p = finished_run
    for rel in ("manifest.json", "recipe.resolved.yaml", "student/config.json", "student/model.safetensors",
                "artifacts/student.fp32.onnx", "artifacts/student.int8.onnx", "artifacts/student.fp32.tflite",
                "train/metrics.jsonl", "report.json", "report.md", "report.html", "gate.json"):
        assert (run / rel).is_file(), rel
    benches = sorted(f.name for f in (run / "bench").glob("*@*.json"))
    assert benches == ["student.fp32.onnx@local.json", "student.fp32.tflite@local.json", "student.int8.onnx@local.json",
                       "student@local.json", "teacher@local.json"]
    macs = json.loads((run / "bench" / "macs.json").read_text())["macs"]
    assert 0 < macs["student"] < macs["teacher"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values()) and len(manifest["stages"]) == 10
    assert "report: " in p.stdout and "gate PASSED" in p.stdout


def test_the_student_carries_a_model_card_and_the_files_their_tokenizer(finished_run):
    from transformers import AutoTokenizer

    from kd_edge.runfiles import RunFiles

    _, run, _ = finished_run
    card = (run / "student" / "README.md").read_text()
    assert card.startswith("---\nlicense: ") and "library_name: sentence-transformers" in card
    report = json.loads((run / "report.json").read_text())
    for row in report["rows"]:  # every model's line in the key figures
        assert f"| {row['name']} | " in card, row["name"]
    assert "| student.fp32.onnx | onnx fp32 |" in card and "| pass |" in card and "## Licenses" in card
    # the card is the report stage's: the distill stage's records leave it out
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert "student/README.md" in stages["report"]["outputs"]
    assert "student/README.md" not in stages["distill"]["outputs"]
    # the tokenizer travels beside the exported files, and is the student's
    assert (run / "artifacts" / "tokenizer.json").is_file()
    text = "A sentence the app will embed."
    assert AutoTokenizer.from_pretrained(str(run / "artifacts"))(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(str(run / "student"))(text)["input_ids"]
    assert [p.name for p in RunFiles(run).artifacts.sidecars()] == [
        "student.fp32.onnx.json", "student.fp32.tflite.json", "student.int8.onnx.json"]


def test_report_puts_every_model_side_by_side(finished_run):
    _, run, _ = finished_run
    report = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "student", "student.fp32.onnx", "student.fp32.tflite", "student.int8.onnx"]
    for row in rows.values():
        for key in ("params", "file_size_mb", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
                    "throughput_per_s", "peak_rss_mb", "probe_accuracy", "cosine_to_teacher", "knn_agreement"):
            assert row.get(key) is not None, (row["name"], key)
    assert rows["student.fp32.onnx"]["max_abs_diff"] <= 1e-4 and rows["student.fp32.tflite"]["max_abs_diff"] <= 1e-4
    # the fp32 ONNX file carries ONNX Runtime's fusions (and still matched above); int8 is made from the
    # unfused graph. (File sizes of a 32-wide model are graph overhead: the wide-model tests compare them.)
    assert rows["student.fp32.onnx"]["fusions"].get("Attention", 0) >= 1, rows["student.fp32.onnx"]["fusions"]
    assert rows["student.int8.onnx"]["fusions"] is None
    assert rows["teacher"]["cosine_to_teacher"] == pytest.approx(1.0)
    html = (run / "report.html").read_text()
    assert "<svg" in html and "student.int8.onnx" in html and "http" not in html.replace("http-equiv", "")


def test_rerun_of_finished_run_does_nothing_quickly(finished_run):
    recipe, run, _ = finished_run
    before = (run / "manifest.json").read_text()
    t0 = time.perf_counter()
    p = kd_edge("run", recipe, "--out", run, "-q")
    elapsed = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    assert "nothing to do" in p.stdout and elapsed < 5, elapsed
    after = json.loads((run / "manifest.json").read_text())
    assert {k: v["key"] for k, v in after["stages"].items()} == {k: v["key"] for k, v in json.loads(before)["stages"].items()}


def test_out_holding_another_run_is_refused_and_untouched(finished_run, tmp_path):
    recipe, run, _ = finished_run
    other = tmp_path / "other.yaml"
    data = yaml.safe_load(recipe.read_text())
    data["distill"]["lr"] = 1e-3
    other.write_text(yaml.safe_dump(data))
    snapshot = {f: f.stat().st_mtime_ns for f in run.rglob("*") if f.is_file() and f.name != ".lock"}
    p = kd_edge("run", other, "--out", run)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "holds a run of a different recipe" in p.stderr
    assert "Traceback" not in p.stderr
    assert {f: f.stat().st_mtime_ns for f in run.rglob("*") if f.is_file() and f.name != ".lock"} == snapshot


def test_resume_reruns_only_what_changed(finished_run, tmp_path):
    recipe, run, _ = finished_run
    run = _copy(run, tmp_path / "run")
    p = kd_edge("run", recipe, "--out", run, "--resume", "-q", "--set", "bench.runs=6")
    assert p.returncode == 0, p.stderr
    assert stages_run(p.stdout) == ["bench", "report", "gate"]
    assert json.loads((run / "bench" / "teacher@local.json").read_text())["timed_runs"] == 6


def test_a_file_changed_in_place_with_its_size_and_mtime_kept_is_noticed_and_redone(finished_run, tmp_path):
    recipe, run, _ = finished_run
    run = _copy(run, tmp_path / "run")
    target = run / "artifacts" / "student.int8.onnx"
    original = target.read_bytes()
    st = target.stat()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF  # one byte in the weights, same size
    target.write_bytes(bytes(changed))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    p = kd_edge("run", recipe, "--out", run, "-q")
    assert p.returncode == 0, p.stderr
    assert stages_run(p.stdout)[0] == "export"  # the stage that made it, and what reads it after
    assert target.read_bytes() == original  # export is deterministic: the file is the one it made


def test_killed_distillation_resumes_from_its_checkpoint(tmp_path, tiny_teacher, tiny_data):
    recipe = tmp_path / "long.yaml"
    data = tiny_recipe_dict(tiny_teacher, tiny_data, distill__max_steps=150, distill__checkpoint_every=10,
                            distill__log_every=1)
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    proc = subprocess.Popen([*KD_EDGE, "distill", str(recipe), "--out", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = out / "train" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(ckpt.glob("step-*/state.json")):
        assert proc.poll() is None, "distill finished before it could be killed; raise max_steps"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in ckpt.glob("step-*") if (p / "state.json").is_file())
    assert 0 < killed_at < 150
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["distill"]["status"] == "running"

    p = kd_edge("distill", recipe, "--out", out, "-q")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["steps"] == 150 and summary["resumed_from_step"] >= killed_at
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 151))
    assert not ckpt.exists()  # checkpoints are removed once the student is saved
