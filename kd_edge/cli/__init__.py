"""The `kd-edge` command line: parse, call the library, print. Heavy imports happen inside commands."""

from __future__ import annotations

import logging
import os
import sys

import typer
# Typer 0.29 (pinned) carries its own copy of click; its exceptions are what the parser raises.
from typer._click import exceptions as click_exceptions

app = typer.Typer(
    name="kd-edge",
    help="Distill a Hugging Face teacher into a small student, export it to ONNX/TFLite, prove it equal, "
    "benchmark it where it will run, and report teacher vs student.\n\n"
    "Start with `kd-edge run` (the bundled MiniLM recipe) or `kd-edge init` (a recipe of your own).",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

from kd_edge.cli import bench, distill, doctor, export, gate, init, list, report, run, sweep, tokenizer  # noqa: E402,F401  (registers commands)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for every error.")) -> None:
    if debug:
        os.environ["KD_EDGE_DEBUG"] = "1"


# Library chatter that says nothing to a kd-edge user: weight-loading bars, TensorFlow/absl C++ logs.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TF_CPP_MIN_LOG_LEVEL": "3",
             "GLOG_minloglevel": "2", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
# torchao (pulled in by litert-torch) warns about CUDA kernels it cannot load on a CPU machine.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def _interrupt_handlers() -> dict:
    """Ctrl-C and SIGTERM end a command the same way: stages remove their temporary output, the
    manifest marks the stage interrupted, and main() prints how to continue. Typer turns the
    KeyboardInterrupt into a bare exit 130, so the signal is remembered here."""
    import signal

    seen: dict = {}

    def on_signal(signum, frame):
        seen["signal"] = signum
        if signum == signal.SIGTERM:
            raise SystemExit(143)
        raise KeyboardInterrupt

    import threading

    if threading.current_thread() is threading.main_thread():  # else an embedding program's handlers stay
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    return seen


def main() -> None:
    """Entry point: a KdEdgeError (or an operating-system error) becomes one line `error: <message>`
    and exit code 2; Ctrl-C prints how to continue and exits 130."""
    from kd_edge.errors import KdEdgeError, from_os_error

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    seen = _interrupt_handlers()
    try:
        code = app(standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as e:  # `kd-edge` alone: the help, as click shows it
        e.show()
        sys.exit(2)
    except click_exceptions.UsageError as e:  # a wrong option or value: one line, like every other error
        command = e.ctx.command_path if e.ctx is not None else "kd-edge"
        _fail(f"{e.format_message().rstrip('.')}; see `{command} --help`", 2)
    except click_exceptions.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except typer.Abort:  # end of input at a prompt
        _fail("aborted (end of input); run the command again", 1)
    except KdEdgeError as e:
        if _debug():
            raise
        _fail(with_flags(e), e.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except OSError as e:
        err = from_os_error(e)
        if err is None or _debug():
            raise
        _fail(str(err), err.exit_code)
    except SystemExit as e:
        if seen.get("signal") is not None and e.code in (130, 143):
            _interrupted(e.code)
        raise
    if seen.get("signal") is not None and code in (130, 143):  # Typer turned Ctrl-C into exit 130
        _interrupted(code)
    sys.exit(code if isinstance(code, int) else 0)


def with_flags(err) -> str:
    """The error's line, with the flags of the command that ran for the recipe keys it names."""
    from kd_edge.cli.options import RECIPE_FLAGS

    keys = getattr(err, "keys", ())
    name = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    command = getattr(typer.main.get_command(app), "commands", {}).get(name) if keys else None
    if command is None:
        return str(err)
    opts = {o for p in command.params for o in getattr(p, "opts", [])}
    flags = []
    for key in keys:
        if RECIPE_FLAGS.get(key) in opts:
            flags.append(RECIPE_FLAGS[key])
        elif "--set" in opts:
            flags.append(f"--set {key}=...")
    return f"{err} (on the command line: {', '.join(flags)})" if flags else str(err)


def _debug() -> bool:
    """--debug (which the root callback turns into KD_EDGE_DEBUG once parsing reached it) or the variable."""
    return bool(os.environ.get("KD_EDGE_DEBUG")) or "--debug" in sys.argv[1:2]


def _fail(message: str, code: int) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


def _interrupted(code: int = 130) -> None:
    command = " ".join(["kd-edge", *sys.argv[1:]])
    print(f"\ninterrupted; run the same command again to continue where it stopped: {command}", file=sys.stderr)
    sys.exit(code)
