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
    assert code == 3 and "no signature for batch 1 x sequence 128" in doc["error"] and "b1_s16" in doc["error"]


def test_local_target_turns_runner_failure_into_target_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(TargetError, match=r"bad.onnx on local: onnxruntime cannot load .* \(phase: load\)"):
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
