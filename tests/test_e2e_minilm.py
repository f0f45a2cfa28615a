"""End to end on the real all-MiniLM-L6-v2 teacher and the bundled VADER data (a small subset, few
steps): the default recipe's path, through the real `kd-edge run` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_default_recipe_on_the_real_teacher(tmp_path):
    out = tmp_path / "run"
    overrides = ["data.max_samples=1200", "distill.max_steps=60", "distill.checkpoint_every=30",
                 "bench.runs=10", "bench.warmup_runs=2", "bench.rounds=1", "bench.seq_len=32", "verify.max_examples=60",
                 # 960 training texts leave ~20 % of the held-out tokens outside the trimmed vocabulary
                 "student.vocabulary_max_unknown=0.3"]
    cmd = [sys.executable, "-m", "kd_edge", "run", "--out", str(out), "-q"]
    for o in overrides:
        cmd += ["--set", o]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    # the default gate asks for 97 % of the teacher's probe accuracy, which 60 steps on 960 texts
    # need not reach: exit 1 (budget broken) is a valid outcome here, exit 2 is not
    assert p.returncode in (0, 1), p.stdout + p.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["teacher"]["params"] == 22_713_216
    assert rows["student"]["params"] < 0.7 * rows["teacher"]["params"]
    for name in ("student.fp32.onnx", "student.fp32.tflite"):
        assert rows[name]["max_abs_diff"] <= 1e-4, name
        assert rows[name]["parity_passed"] is True
    int8, fp32 = rows["student.int8.onnx"], rows["student.fp32.onnx"]
    fallback = int8.get("fallback") or {}
    if fallback.get("engaged"):
        # 60 steps leave a student whose int8 file may lose just over the 1-point budget on training
        # texts (seen: 1.06 pt on an AMD EPYC): then layers stay in float, and the report says so
        assert fallback["within_budget"] and int8["file_size_mb"] < fp32["file_size_mb"]
        assert "int8 fallback level" in (out / "report.md").read_text()
    else:
        assert int8["file_size_mb"] < 0.3 * fp32["file_size_mb"]
    assert rows["student.int8.onnx"]["cosine_to_teacher"] > 0.5
    # the teacher probe on real sentiment data is far above chance
    assert rows["teacher"]["probe_accuracy"] > 0.65
    for row in rows.values():
        assert row["latency_p50_ms"] > 0 and row["peak_rss_mb"] > 0
    gate = json.loads((out / "gate.json").read_text())
    assert gate["n_budgets"] == 4
    assert (out / "report.html").stat().st_size > 5000
