"""`kd-edge sweep`: six variants of a pruned tiny student on one teacher cache, killed with SIGKILL in the
middle and started again with the same command, then compared in one report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kd_edge.errors import ConfigError
from kd_edge.sweep import Axis, collect, parse_axis, variants
from tests.conftest import tiny_recipe_dict

GRID = ["--grid", "student.intermediate_size=16,32,48", "--grid", "student.layers=1,2"]


def test_grid_values_and_names():
    assert parse_axis("student.intermediate_size=16, 32").values == (16, 32)
    assert parse_axis("student.layers=[[2, 5], [1, 3, 5]]").values == ([2, 5], [1, 3, 5])
    assert parse_axis("student.vocabulary=teacher,trim").values == ("teacher", "trim")
    names = [v["name"] for v in variants([Axis("student.layers", ([2, 5], 3)), Axis("distill.lr", (1e-4,))])]
    assert names == ["layers-2-5_lr-0.0001", "layers-3_lr-0.0001"]
    from kd_edge.sweep import _values  # a grid value reads as the recipe spells it, not as a verdict
    assert _values({"values": {"distill.freeze_embeddings": False, "x.y": None}}) == "freeze_embeddings=false, y=—"
    with pytest.raises(ConfigError, match="lists a value twice"):
        parse_axis("distill.lr=1e-4,1e-4")
    with pytest.raises(ConfigError, match="distill has no key 'learning_rate'; keys there: .*lr"):
        parse_axis("distill.learning_rate=1e-4")


def test_the_front_and_the_smallest_passing_file(tmp_path):
    def report(name, files, passed):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"name": "teacher", "kind": "teacher", "probe_accuracy": 0.9, "latency_p50_ms": 10.0},
                {"name": "student", "kind": "student", "probe_accuracy": 0.88, "probe_accuracy_ratio": 0.978, "params": 5}]
        rows += [{"name": f, "kind": "artifact", "file_size_mb": mb, "latency_p50_ms": ms, "probe_accuracy": q,
                  "parity_passed": True, "speedup_p50": 10 / ms} for f, mb, ms, q in files]
        (folder / "report.json").write_text(json.dumps({"quality_metric": "probe_accuracy", "higher_is_better": True,
                                                        "rows": rows, "gate": {"n_budgets": 1, "passed": passed,
                                                                               "checks": [check(passed)]}}))

    def check(passed):
        return {"artifact": "i8", "metric": "file_size_mb", "value": 0.5 if passed else 1.0, "bound": "<= 0.75",
                "passed": passed}
    report("a", [("f32", 4.0, 1.0, 0.88), ("i8", 1.0, 0.5, 0.87)], True)
    report("b", [("f32", 2.0, 0.6, 0.86), ("i8", 0.5, 0.3, 0.80)], False)  # b/f32 is dominated by a/i8
    state = {"recipe": "r.yaml", "overrides": [], "grid": {"x": [1, 2]},
             "variants": [{"name": "a", "values": {"x": 1}, "status": "done"},
                          {"name": "b", "values": {"x": 2}, "status": "done"}]}
    doc = collect(tmp_path, state)
    front = {(p["variant"], p["file"]) for p in doc["files"] if p["pareto"]}
    assert front == {("a", "f32"), ("a", "i8"), ("b", "i8")}
    assert (doc["smallest_passing"]["variant"], doc["smallest_passing"]["file"]) == ("a", "i8")  # b's gate failed
    # each variant is tagged v1, v2 ... in the charts and tables, and says which of its budgets broke
    assert [v["tag"] for v in doc["variants"]] == ["v1", "v2"]
    assert doc["variants"][0]["gate_broken"] == [] and doc["variants"][1]["gate_broken"] == [
        "i8.file_size_mb 1 (needs <= 0.75)"]
    from kd_edge.sweep import to_html, to_markdown
    doc["files"][0]["latency_reliable"] = False  # a file timed on a busy machine is starred, with the note
    assert "| v1 | f32 | 4.00 | 1 * |" in to_markdown(doc) and "busy machine" in to_html(doc)
    assert "| v2 | x=2 | done |" in to_markdown(doc) and "i8.file_size_mb 1 (needs &lt;= 0.75)" in to_html(doc)


def _sweep(recipe: Path, out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kd_edge", "sweep", str(recipe), *GRID, "--out", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def test_a_killed_sweep_resumes_and_reports(tmp_path, tiny_teacher, tiny_data):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(
        tiny_teacher, tiny_data, student={"init": "prune", "layers": 2},
        export={"artifacts": [{"format": "onnx", "precision": "fp32"}], "int8_fallback": False},
        bench={"runs": 5, "warmup_runs": 1, "threads": 1, "seq_len": 32, "rounds": 1, "student_torch": False,
               "teacher": False},  # six tiny teachers' PyTorch timings would be most of the test's minute
        gate={"budgets": [{"artifact": "student", "metric": "cosine_to_teacher", "min": 0.5}]})))
    out = tmp_path / "sweep"
    first = out / "intermediate_size-16_layers-1"
    proc = _sweep(recipe, out)
    deadline = time.time() + 300
    second = out / "intermediate_size-16_layers-2" / "manifest.json"
    while not second.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGKILL)  # in the second variant: the first is done, the rest not started
    proc.wait()
    state = json.loads((out / "sweep.json").read_text())
    assert [v["status"] for v in state["variants"]][:2] == ["done", "running"]
    before = json.loads((first / "manifest.json").read_text())["stages"]

    done = subprocess.run([sys.executable, "-m", "kd_edge", "sweep", str(recipe), *GRID, "--out", str(out), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = json.loads((first / "manifest.json").read_text())["stages"]
    assert {k: v["started"] for k, v in after.items()} == {k: v["started"] for k, v in before.items()}, \
        "the finished variant was not run again"
    doc = json.loads((out / "sweep_report.json").read_text())
    assert doc["n_done"] == doc["n_variants"] == 6 and len(doc["files"]) == 6
    assert any(p["pareto"] for p in doc["files"])
    assert doc["smallest_passing"]["size_mb"] == min(p["size_mb"] for p in doc["files"])
    params = {v["name"]: v["params"] for v in doc["variants"]}
    assert params["intermediate_size-16_layers-1"] < params["intermediate_size-48_layers-1"] < \
        params["intermediate_size-48_layers-2"]
    # one cache per set of teacher layers the hidden loss reads (1 student layer: teacher layer 4; 2: 2 and 4),
    # shared by the three FFN widths; nothing the killed writer left behind
    caches = sorted(p.name for p in (out / "teacher_cache").iterdir() if p.is_dir())
    assert len(caches) == 2 and not any(c.startswith(".") for c in caches), caches
    html = (out / "sweep_report.html").read_text()
    assert html.count("<svg") == 2 and "smallest passing" in html
    assert "Smallest file that meets the gate: intermediate_size-16_layers-1/student.fp32.onnx" in done.stdout
