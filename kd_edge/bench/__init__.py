"""Benchmarks: run the standalone device runner on a target, one fresh process per model."""

from __future__ import annotations

from pathlib import Path

from kd_edge.registry import Registry

RUNNER_PATH = Path(__file__).resolve().parent.parent / "device_runner.py"

TARGETS: Registry = Registry("target")
TARGETS.declare("local", "kd_edge.bench.targets.local:LocalTarget",
                summary="This machine: a fresh subprocess per model, thread count set, optional core pinning.")
