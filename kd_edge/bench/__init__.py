"""Benchmarks: run the standalone device runner on a target, one fresh process per model."""

from __future__ import annotations

from pathlib import Path

from kd_edge.registry import Registry

RUNNER_PATH = Path(__file__).resolve().parent.parent / "device_runner.py"

# Kinds of target; `kd_edge.bench.profiles` turns a --target argument into one of them.
TARGETS: Registry = Registry("target")
TARGETS.declare("local", "kd_edge.bench.targets.local:LocalTarget",
                summary="This machine: a fresh subprocess per model, thread count set, optional core pinning.")
TARGETS.declare("ssh", "kd_edge.bench.targets.ssh:SshTransport", requires=("paramiko",), extra="ssh",
                summary="A machine over SSH (Raspberry Pi...): strict host keys, uploads cached by checksum.")
TARGETS.declare("adb", "kd_edge.bench.targets.adb:AdbTransport",
                summary="An Android device over adb, with the device's Python.")
TARGETS.declare("qemu", "kd_edge.bench.targets.qemu:ChrootTransport",
                summary="An arm64 root file system under qemu-user: the ARM path, emulated timings.")
