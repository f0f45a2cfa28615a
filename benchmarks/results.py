"""What every benchmark script shares: the machine line and appending an entry to RESULTS.md."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def machine() -> str:
    """CPU model, core count and Python, as the device runner's fingerprint records them."""
    sys.path.insert(0, str(ROOT))
    from kd_edge.device_runner import fingerprint

    env = fingerprint(None)
    return f"{env['cpu_model']}, {env['cpu_count']} cores, Python {platform.python_version()}"


def append(text: str) -> None:
    """Add an entry (starting with its ### heading) to benchmarks/RESULTS.md."""
    with open(RESULTS, "a") as f:
        f.write(text if text.startswith("\n") else "\n" + text)
