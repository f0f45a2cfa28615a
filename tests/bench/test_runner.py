"""The device runner runs for real, in a fresh process, on real ONNX and TFLite files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kd_edge import device_runner
from kd_edge.bench import RUNNER_PATH
from kd_edge.bench.targets.local import LocalTarget
from kd_edge.errors import TargetError


def _run(*args):
    p = subprocess.run([sys.executable, str(RUNNER_PATH), *map(str, args)], capture_output=True, text=True, timeout=300)
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, runtime", [("student.fp32.onnx", "onnxruntime"), ("student.fp32.tflite", "tflite")])
def test_runner_measures_every_phase(files, name, runtime):
    code, doc = _run(files / name, "--runtime", runtime, "--batch", 1, "--seq", 16, "--threads", 1,
                     "--warmup", 2, "--runs", 12, "--vocab-size", 90)
    assert code == 0, doc
    assert doc["schema"] == device_runner.SCHEMA and doc["runtime"] == runtime
    assert doc["timed_runs"] == 12 and len(doc["samples_ms"]) == 12 and doc["warmup_runs"] >= 2
    lat = doc["latency"]
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert lat["p50_ci95_ms"][0] <= lat["p50_ms"] <= lat["p50_ci95_ms"][1]
    mem = doc["memory"]
    assert 0 < mem["after_import_mb"] <= mem["after_load_mb"] <= mem["after_runs_mb"] == doc["peak_rss_mb"]
    assert doc["load_ms"] > 0 and doc["file_size_bytes"] == (files / name).stat().st_size
    assert doc["environment"]["cpu_count"] >= 1 and doc["environment"]["threads"] == 1


def test_runner_reports_unloadable_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code, doc = _run(bad, "--runtime", "onnxruntime", "--runs", 5)
    assert code == 3 and doc["phase"] == "load" and "onnxruntime cannot load" in doc["error"]


def test_runner_names_available_tflite_signatures(files):
    code, doc = _run(files / "student.fp32.tflite", "--runtime", "tflite", "--batch", 1, "--seq", 128, "--runs", 5)
    assert code == 3 and "no signature takes batch 1 x sequence 128" in doc["error"] and "b1_s16" in doc["error"]


def test_a_shorter_input_is_padded_to_the_nearest_tflite_signature(files):
    """As a deployed app pads a prompt to its bucket (and as verify does): 10 tokens run through b1_s16."""
    code, doc = _run(files / "student.fp32.tflite", "--runtime", "tflite", "--batch", 1, "--seq", 10, "--runs", 5,
                     "--vocab-size", 90)
    assert code == 0, doc
    assert doc["signature"] == "b1_s16" and doc["padded_to"] == 16 and doc["seq"] == 10


def test_the_runner_reads_what_else_loaded_the_machine(files):
    """Another process burning a core while the runner times is seen and named (other_cores)."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        code, doc = _run(files / "student.fp32.onnx", "--runtime", "onnxruntime", "--seq", 16, "--threads", 1,
                         "--runs", 300, "--vocab-size", 90)
    finally:
        burner.kill()
    assert code == 0, doc
    load = doc["machine_load"]
    assert load["other_cores"] > 0.5, load  # the burner's core
    assert 0 <= load["steal_pct"] <= 100 and load["loadavg_before"] is not None


def test_local_target_turns_runner_failure_into_target_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(TargetError, match=r"bad.onnx on local failed at load: onnxruntime cannot load .*; the file may"):
        LocalTarget().run(RUNNER_PATH, bad, ["--runtime", "onnxruntime", "--runs", "5"], threads=1, timeout_s=120)


def test_local_target_timeout(files):
    with pytest.raises(TargetError, match="took longer than 0.3 s"):
        LocalTarget().run(RUNNER_PATH, files / "student.fp32.onnx", ["--runtime", "onnxruntime", "--runs", "100000", "--vocab-size", "90", "--seq", "16"],
                          threads=1, timeout_s=0.3)


def test_latency_stats_match_numpy():
    rng = np.random.default_rng(0)
    samples = list(rng.gamma(2.0, 1.0, size=101))
    stats = device_runner.latency_stats(samples, batch=4)
    for q in (50, 90, 99):
        assert stats[f"p{q}_ms"] == pytest.approx(np.percentile(samples, q))
    assert stats["throughput_per_s"] == pytest.approx(4000 / np.mean(samples))


def test_rounds_interleave_the_models_and_merge_each_models_runs(files):
    """Three models, three rounds: the processes take turns (forward, backward, forward), each model's
    timed runs are pooled, and its rounds' p50 are kept."""
    from kd_edge.bench.rounds import Job, run_rounds

    order = []

    class Recording(LocalTarget):
        def run(self, runner, model, args, **kw):
            order.append(model.name)
            return super().run(runner, model, args, **kw)

    args = ["--runtime", "onnxruntime", "--seq", "16", "--warmup", "1", "--vocab-size", "90"]
    bad = files / "broken.onnx"
    bad.write_bytes(b"not a model")
    jobs = [Job("a", files / "student.fp32.onnx", args, 1), Job("b", bad, args, 1),
            Job("c", files / "student.fp32.tflite", ["--runtime", "tflite", "--seq", "16", "--vocab-size", "90"], 1)]
    docs = run_rounds(Recording(), RUNNER_PATH, jobs, rounds=3, runs=12, timeout_s=120)
    # b fails in round 1 and is left out after; a and c alternate: a c | c a | a c
    assert order == ["student.fp32.onnx", "broken.onnx", "student.fp32.tflite",
                     "student.fp32.tflite", "student.fp32.onnx", "student.fp32.onnx", "student.fp32.tflite"]
    a, b, c = docs
    assert "error" in b and "failed at load" in b["error"]
    for doc in (a, c):
        assert doc["timed_runs"] == 12 and len(doc["samples_ms"]) == 12 and len(doc["rounds"]) == 3
        assert doc["latency"]["p50_ms"] == pytest.approx(np.percentile(doc["samples_ms"], 50))
        assert set(doc["reliability"]) == {"reliable", "flags"}


def test_assess_names_every_reason_a_timing_is_unreliable():
    from kd_edge.bench.rounds import assess

    quiet = {"latency": {"p50_ms": 2.0, "p99_ms": 2.5}, "rounds": [{"p50_ms": 2.0}, {"p50_ms": 2.1}],
             "machine_load": {"other_cores_max": 0.05, "steal_pct_max": 0.5}}
    assert assess(quiet) == {"reliable": True, "flags": []}
    busy = {"latency": {"p50_ms": 2.0, "p99_ms": 11.8}, "rounds": [{"p50_ms": 2.0}, {"p50_ms": 3.1}],
            "machine_load": {"other_cores_max": 1.2, "steal_pct_max": 9.0}}
    flags = assess(busy)["flags"]
    assert flags == ["other processes used 1.2 cores while it was timed", "the hypervisor took 9 % of the CPU time",
                     "its rounds' p50 differ 1.55×", "p99 is 5.9× p50"]
