"""The Raspberry Pi path under emulation (`make test-pi`): the exported student, ONNX and TFLite,
benchmarked by the device runner inside an arm64 root file system under qemu-user. It proves the ARM
software path (aarch64 wheels, runtimes, runner); the timings are emulated and marked so.

Not part of `make test` (building the root file system takes minutes and needs root): marker `pi`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kd_edge.bench import RUNNER_PATH
from kd_edge.bench.profiles import make_target, resolve_target

pytestmark = pytest.mark.pi
ROOTFS = Path(os.environ.get("KD_EDGE_PI_ROOTFS", ".cache/pi-rootfs"))


@pytest.mark.parametrize("name, runtime", [("student.fp32.onnx", "onnxruntime"), ("student.fp32.tflite", "tflite")])
def test_runner_under_emulated_pi(files, name, runtime):
    assert (ROOTFS / ".kd-edge-ready").is_file(), f"no emulated Pi root file system at {ROOTFS}: run make pi-rootfs"
    profile = resolve_target("rpi5-emulated").model_copy(update={"root": str(ROOTFS)})
    target = make_target(profile)
    doc = target.run(RUNNER_PATH, files / name, ["--runtime", runtime, "--seq", "16", "--runs", "5", "--warmup", "1",
                                                  "--vocab-size", "90", "--threads", "1"], threads=1, timeout_s=900)
    env = doc["environment"]
    assert doc["target"] == "rpi5-emulated" and env["emulated"] is True
    assert env["machine"] == "aarch64" and doc["timed_runs"] == 5 and doc["latency"]["p50_ms"] > 0
