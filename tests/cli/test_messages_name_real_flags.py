"""Every message that tells the user to pass a flag names a flag that exists.

Walks every string in the package (f-strings too) and checks each ``--flag`` it mentions against the
options of the kd-edge commands, or against the flags of the other program the message tells the user
to run (pip, ssh-keyscan, ...), listed below with that program.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import kd_edge

FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]*)")
# Flags of other programs that kd-edge's messages quote, and the program they belong to.
FOREIGN = {
    "--no-deps": "pip install", "--num_processes": "accelerate launch", "--multi_gpu": "accelerate launch",
    "--nproc_per_node": "torchrun", "--graph": "benchmark_model", "--num_runs": "benchmark_model",
    "--warmup_runs": "benchmark_model", "--signature_to_run_for": "benchmark_model", "--num_threads": "benchmark_model",
    "--arch": "mmdebstrap", "--variant": "mmdebstrap", "--include": "mmdebstrap", "--only-binary": "pip download",
    "--platform": "pip download", "--python-version": "pip download", "--mount": "unshare", "--fork": "unshare",
    "--bind": "mount", "--outfile": "convert_hf_to_gguf.py", "--outtype": "convert_hf_to_gguf.py",
    "--headless": "chromium", "--runtime": "device_runner.py", "--batch": "device_runner.py",
    "--seq": "device_runner.py", "--warmup": "device_runner.py", "--runs": "device_runner.py",
    "--seed": "device_runner.py", "--vocab-size": "device_runner.py", "--threads": "device_runner.py",
    "--pooling": "device_runner.py", "--normalize": "device_runner.py", "--task": "device_runner.py",
    "--gguf-file": "device_runner.py", "--allow-pickle": "device_runner.py", "--head": "device_runner.py",
    "--auto-class": "device_runner.py", "--lm-pp": "device_runner.py", "--lm-tg": "device_runner.py",
    "--lm-ttft": "device_runner.py", "--help": "every command", "--model": "llama_cpp.server",
    "--port": "llama_cpp.server", "--model_alias": "llama_cpp.server", "--n_threads": "llama_cpp.server",
    "--n_ctx": "llama_cpp.server", "--logits_all": "llama_cpp.server",
}


def kd_edge_flags() -> dict[str, set[str]]:
    """command -> its options, from the real Typer app."""
    from typer.main import get_command

    from kd_edge.cli import app

    group = get_command(app)
    out = {"kd-edge": {o for p in group.params for o in p.opts}}
    for name, command in group.commands.items():
        out[name] = {o for p in command.params for o in getattr(p, "opts", [])}
    return out


def message_strings(path: Path) -> list[tuple[int, str]]:
    """Every string constant in a module (f-string parts joined), with its line."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(v.value for v in node.values if isinstance(v, ast.Constant))))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
    return out


def test_every_flag_a_message_names_exists():
    flags = kd_edge_flags()
    ours = set().union(*flags.values())
    missing = []
    package = Path(kd_edge.__file__).parent
    seen = 0
    for path in sorted(package.rglob("*.py")):
        for line, text in message_strings(path):
            for flag in FLAG.findall(text):
                seen += 1
                if flag not in ours and flag not in FOREIGN:
                    missing.append(f"{path.relative_to(package)}:{line}: {flag} in {text[:80]!r}")
    assert seen > 50  # the walk found the messages
    assert not missing, "\n".join(missing)


def test_flags_are_named_for_the_command_that_has_them():
    """A few messages name a flag of one command: check that command has it."""
    flags = kd_edge_flags()
    assert {"--key", "--known-hosts", "--host", "--threads", "--rounds"} <= flags["bench"]
    assert {"--force", "--resume", "--set", "--out", "--check"} <= flags["run"]
    assert {"--calibration", "--tokenizer", "--keep-float", "--output", "--force"} <= flags["quantize"]
    assert {"--reliable-only", "--baseline", "--check"} <= flags["gate"]
    assert {"--task", "--teacher", "--data"} <= flags["init"]
    assert {"--compare", "--out", "--force"} <= flags["report"]
