"""The command line as a user meets it: fast help, one-line errors with exit code 2, no tracebacks."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import tiny_recipe_dict

KD_EDGE = [sys.executable, "-m", "kd_edge"]


def kd_edge(*args, cwd=None, timeout=300):
    return subprocess.run([*KD_EDGE, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_one_line_error(p, *fragments):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in p.stdout + p.stderr
    for fragment in fragments:
        assert fragment in err, err


def test_cli_import_leaves_heavy_libraries_out():
    code = ("import sys, kd_edge.cli, kd_edge.config, kd_edge.pipeline, kd_edge.preflight;"
            "print(','.join(m for m in ('torch','transformers','onnxruntime','tensorflow','litert_torch','onnx','sklearn')"
            " if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "", p.stdout + p.stderr


def test_help_is_fast_and_teaches():
    kd_edge("--help")  # warm the file cache
    times = []
    for _ in range(3):
        # CPU seconds of the process, not wall time: the suite runs two workers on two cores, and the
        # other one may be busy (importing torch alone takes about 2 s of CPU here, and is refused above)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run([*KD_EDGE, "--help"], capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        assert p.returncode == 0
    assert min(times) < 0.9, times
    for command in ("run", "init", "doctor", "distill", "export", "bench", "report", "gate"):
        assert command in p.stdout
    run_help = kd_edge("run", "--help").stdout
    assert "--set" in run_help and "--resume" in run_help and "--force" in run_help and "Examples" in run_help


@pytest.fixture
def recipe_file(tmp_path, tiny_teacher, tiny_data):
    def write(**over):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_teacher, tiny_data, **over)))
        return path
    return write


def test_missing_recipe(tmp_path):
    assert_one_line_error(kd_edge("run", tmp_path / "nope.yaml"), "does not exist", "kd-edge init")


def test_yaml_syntax_error_says_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nteacher: {model: a\n")
    assert_one_line_error(kd_edge("run", bad), "YAML syntax error at line")


def test_unknown_recipe_key(recipe_file):
    path = recipe_file()
    path.write_text(path.read_text().replace("lr:", "learning_rate:"))
    assert_one_line_error(kd_edge("run", path), "unknown key 'distill.learning_rate'")


def test_teacher_does_not_exist(recipe_file, tmp_path):
    assert_one_line_error(kd_edge("run", recipe_file(teacher={"model": str(tmp_path / "gone")})), "does not exist")


def test_teacher_without_config(recipe_file, tmp_path):
    (tmp_path / "noconfig").mkdir()
    assert_one_line_error(kd_edge("run", recipe_file(teacher={"model": str(tmp_path / "noconfig")})), "has no config.json")


def test_dataset_missing_and_empty(recipe_file, tmp_path):
    assert_one_line_error(kd_edge("run", recipe_file(data={"source": str(tmp_path / "none.jsonl")})), "does not exist")
    (tmp_path / "empty.jsonl").write_text("")
    assert_one_line_error(kd_edge("run", recipe_file(data={"source": str(tmp_path / "empty.jsonl")})), "is empty")


def test_too_many_student_layers(recipe_file):
    assert_one_line_error(kd_edge("run", recipe_file(student={"layers": 9})), "more layers than the teacher has (4)")


def test_bad_inputs_write_nothing(recipe_file, tmp_path):
    out = tmp_path / "out"
    p = kd_edge("run", recipe_file(student={"layers": 9}), "--out", out)
    assert p.returncode == 2 and not out.exists()


def test_out_is_a_foreign_folder(recipe_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_one_line_error(kd_edge("run", recipe_file(), "--out", out, "--force"), "holds no kd-edge run")
    assert (out / "notes.txt").read_text() == "keep me"


def test_resume_and_force_together(recipe_file, tmp_path):
    assert_one_line_error(kd_edge("run", recipe_file(), "--resume", "--force"), "contradict")


def test_bad_set_override(recipe_file):
    assert_one_line_error(kd_edge("run", recipe_file(), "--set", "distill.epochs"), "has no value; write key.sub=value")


def test_init_writes_a_recipe_that_loads_and_refuses_to_overwrite(tmp_path, tiny_teacher, tiny_data):
    target = tmp_path / "mine.yaml"
    p = kd_edge("init", target, "--teacher", tiny_teacher, "--data", tiny_data)
    assert p.returncode == 0, p.stderr
    text = target.read_text()
    data = yaml.safe_load(text)
    assert data["name"] == "mine" and data["teacher"]["model"] == str(tiny_teacher)
    assert data["data"]["source"] == str(tiny_data) and "where" not in data["data"]
    assert data["data"]["text_field"] == "text" and data["data"]["label_field"] == "label"
    assert "its columns: text, label, group" in text  # it read the user's data
    from kd_edge.config import load_recipe
    from kd_edge.preflight import resolve

    resolve(load_recipe(target)[0])
    assert_one_line_error(kd_edge("init", target), "already exists")


@pytest.mark.parametrize("task", ["sentence_embedding", "sequence_classification", "causal_lm"])
def test_init_writes_a_starter_for_every_task_that_resolves(tmp_path, task, tiny_data):
    target = tmp_path / f"{task}.yaml"
    p = kd_edge("init", target, "--task", task)
    assert p.returncode == 0, p.stderr
    from kd_edge.config import load_recipe
    from kd_edge.preflight import resolve

    recipe = resolve(load_recipe(target)[0])  # against the bundled teacher of that task and the bundled data
    assert recipe.task == task and target.read_text().count("#") > 15  # it explains itself
    csv = tmp_path / "reviews.csv"
    csv.write_text("review,sentiment\n" + "".join(f"a {'good' if i % 2 else 'bad'} film {i},{'pos' if i % 2 else 'neg'}\n"
                                                  for i in range(30)))
    own = tmp_path / f"own-{task}.yaml"
    assert kd_edge("init", own, "--task", task, "--data", csv).returncode == 0
    data = yaml.safe_load(own.read_text())
    assert data["data"]["text_field"] == "review"
    assert data["data"]["label_field"] == (None if task == "causal_lm" else "sentiment")


def test_doctor_reports_runtimes_and_cpu():
    p = kd_edge("doctor", "--json", timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["runtimes"]["onnxruntime"].startswith("ok")
    assert doc["runtimes"]["ai-edge-litert"].startswith("ok")
    assert isinstance(doc["cpu"]["avx512_vnni"], bool) and doc["cpu"]["cpu_count"] >= 1
    assert doc["libraries"]["torch"].startswith("2.13")


def test_subcommand_on_a_folder_that_is_no_run(tmp_path):
    assert_one_line_error(kd_edge("bench", tmp_path), "is not a kd-edge run folder")
    assert_one_line_error(kd_edge("report", tmp_path), "is not a kd-edge run folder")


def test_gate_command_exit_codes(tmp_path):
    report = {"rows": [{"name": "student.int8.onnx", "speedup_p50": 7.0, "file_size_mb": 15.6}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    ok = tmp_path / "ok.yaml"
    ok.write_text("budgets:\n  - {artifact: student.int8.onnx, metric: speedup_p50, min: 5}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("budgets:\n  - {artifact: student.int8.onnx, metric: file_size_mb, max: 10}\n")
    summary = tmp_path / "summary.md"
    p = kd_edge("gate", tmp_path, "--budget", ok, "--markdown", summary)
    assert p.returncode == 0 and "gate PASSED" in p.stdout and "PASSED" in summary.read_text()
    p = kd_edge("gate", tmp_path / "report.json", "--budget", broken)
    assert p.returncode == 1 and "FAIL" in p.stdout
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("budgets:\n  - {artifact: student.int8.onnx, metric: speedup_p50, minimum: 5}\n")
    assert_one_line_error(kd_edge("gate", tmp_path, "--budget", malformed), "unknown key 'budgets.0.minimum'")
    missing = tmp_path / "missing.yaml"
    missing.write_text("budgets:\n  - {artifact: student.int8.onnx, metric: latency_p99_ms, max: 5}\n")
    assert_one_line_error(kd_edge("gate", tmp_path, "--budget", missing), "no metric 'latency_p99_ms'")
    assert_one_line_error(kd_edge("gate", tmp_path / "nothing"), "no report at")


def test_gate_checks_on_the_command_line_with_a_baseline_and_junit(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    (new / "report.json").write_text(json.dumps({"rows": [{"name": "student.int8.onnx", "latency_p50_ms": 2.6}]}))
    (old / "report.json").write_text(json.dumps({"rows": [{"name": "student.int8.onnx", "latency_p50_ms": 2.4}]}))
    junit = tmp_path / "gate.xml"
    p = kd_edge("gate", new, "--baseline", old, "--check", "student.int8.onnx:latency_p50_ms regress<=10%",
                "--check", "student.int8.onnx:latency_p50_ms<=3", "--junit", junit)
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'failures="0"' in junit.read_text()
    p = kd_edge("gate", new, "--baseline", old, "--check", "student.int8.onnx:latency_p50_ms regress<=5%")
    assert p.returncode == 1 and "FAIL" in p.stdout
    assert_one_line_error(kd_edge("gate", new, "--check", "student.int8.onnx latency < 3"), "is not ROW[@TARGET]:METRIC")
    assert_one_line_error(kd_edge("gate", new, "--check", "student.int8.onnx:latency_p50_ms regress<=5%"),
                          "no baseline report was given")


def test_report_compare(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"name": "main", "rows": [{"name": "student", "latency_p50_ms": 5.0}]}))
    b.write_text(json.dumps({"name": "branch", "rows": [{"name": "student", "latency_p50_ms": 4.0}]}))
    p = kd_edge("report", "--compare", a, b, "--out", tmp_path / "changes.md")
    assert p.returncode == 0, p.stderr
    assert "| student | latency_p50_ms | 5 | 4 | -20.0 % | better |" in p.stdout
    assert (tmp_path / "changes.md").read_text() == p.stdout.rstrip("\n") + "\n"
    assert_one_line_error(kd_edge("report", "--compare", a, tmp_path / "none.json"), "no report at")


def test_list_reads_the_registries_with_each_losss_needs_and_parameters():
    p = kd_edge("list", "losses")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("cosine_margin "))
    assert "reads pooled; parameters: margin=0.2" in lines[at + 1]
    jsd = next(i for i, line in enumerate(lines) if line.startswith("jsd "))
    assert "temperature=1.0, beta=0.5" in lines[jsd + 1]
    targets = kd_edge("list", "targets").stdout
    assert all(kind in targets for kind in ("local ", "ssh ", "adb ", "qemu "))
