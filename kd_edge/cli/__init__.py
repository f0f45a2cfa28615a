"""The `kd-edge` command line: parse, call the library, print. Heavy imports happen inside commands."""

from __future__ import annotations

import logging
import os
import sys

import typer

app = typer.Typer(
    name="kd-edge",
    help="Distill a Hugging Face teacher into a small student, export it to ONNX/TFLite, prove it equal, "
    "benchmark it where it will run, and report teacher vs student.\n\n"
    "Start with `kd-edge run` (the bundled MiniLM recipe) or `kd-edge init` (a recipe of your own).",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

from kd_edge.cli import bench, distill, doctor, export, gate, init, report, run  # noqa: E402,F401  (registers commands)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for every error.")) -> None:
    if debug:
        os.environ["KD_EDGE_DEBUG"] = "1"


# Library chatter that says nothing to a kd-edge user: weight-loading bars, TensorFlow/absl C++ logs.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TF_CPP_MIN_LOG_LEVEL": "3",
             "GLOG_minloglevel": "2", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
# torchao (pulled in by litert-torch) warns about CUDA kernels it cannot load on a CPU machine.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def main() -> None:
    """Entry point: a KdEdgeError becomes `error: <message>` and exit code 2."""
    from kd_edge.errors import KdEdgeError

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

    try:
        app(standalone_mode=True)
    except KdEdgeError as e:
        if os.environ.get("KD_EDGE_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue where it stopped", file=sys.stderr)
        sys.exit(130)
