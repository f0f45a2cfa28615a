"""Benchmarks: run the standalone device runner on a target, one fresh process per model."""

from __future__ import annotations

from pathlib import Path

from kd_edge.registry import Registry

RUNNER_PATH = Path(__file__).resolve().parent.parent / "device_runner.py"
PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"  # the repository's targets/ folder


def profile_names() -> list[str]:
    """Names of the bundled target profiles (the one list: the files of targets/)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


# Kinds of target: each entry is the kind's config class, which holds its settings and connects
# (`kd_edge.bench.profiles` turns a --target argument into one of them).
TARGETS: Registry = Registry("target")
TARGETS.declare("local", "kd_edge.bench.targets.local:LocalTargetConfig",
                summary="This machine: a fresh subprocess per model, thread count set, optional core pinning.")
TARGETS.declare("ssh", "kd_edge.bench.targets.ssh:SshTargetConfig",
                summary="A machine over SSH (Raspberry Pi...): strict host keys, uploads cached by checksum "
                        "(needs paramiko: pip install 'kd-edge[ssh]').")
TARGETS.declare("adb", "kd_edge.bench.targets.adb:AdbTargetConfig",
                summary="An Android device over adb, with the device's Python.")
TARGETS.declare("qemu", "kd_edge.bench.targets.qemu:QemuTargetConfig",
                summary="An arm64 root file system under qemu-user: the ARM path, emulated timings.")
