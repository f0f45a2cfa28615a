"""Benchmarking on another machine: a transport (SSH, adb, a chroot under qemu) carries the device
runner and the model there, runs it with the target's Python, and brings back its JSON.

Uploads go to ``<workdir>/cache/<sha256>-<name>`` and are skipped when the device already holds a
file with that checksum, so a second benchmark of the same file does not upload it again. Every
failure is a one-line ``TargetError`` that says what to do: no Python or no runtime on the device
(what to install), a runtime that cannot load the file, no space left.
"""

from __future__ import annotations

import abc
import hashlib
import json
import shlex
from pathlib import Path
from typing import ClassVar, Protocol

from pydantic import Field

from kd_edge.bench.targets.config import TargetConfig
from kd_edge.bench.targets.local import runner_failure
from kd_edge.errors import TargetError


class RemoteTargetConfig(TargetConfig):
    """What every target reached through a transport says: its Python, its folder, its TFLite benchmark."""

    emulated: ClassVar[bool] = False  # timings are not the device's (software emulation)

    python: str = Field("python3", description="The device's Python interpreter.")
    workdir: str = Field("/tmp/kd-edge-bench", description="Where files go on the device.")
    tflite_benchmark_model: str | None = Field(
        None, description="Path of TFLite's benchmark_model binary on the device: .tflite files run with it (no Python).")

    @abc.abstractmethod
    def transport(self) -> "Transport":
        """The connection to the device (each kind's own: SSH, adb, a chroot)."""

    def connect(self) -> "RemoteTarget":
        return RemoteTarget(self.transport(), python=self.python, workdir=self.workdir, emulated=self.emulated,
                            name=self.name, tflite_benchmark_model=self.tflite_benchmark_model)

TORCH_RUNTIME = (("torch",), "torch transformers")  # a model folder: the modules to find, what to install


def runtime_needs(runtime: str) -> tuple[tuple[str, ...], str]:
    """The modules of which one must import on a device to run ``runtime``, and what to install there
    (from the format that runs in it, kd_edge/formats/)."""
    if runtime == "torch":
        return TORCH_RUNTIME
    from kd_edge.formats import runtime_format

    fmt = runtime_format(runtime)
    return fmt.device_modules, fmt.device_package


class Transport(Protocol):
    """How commands and files reach a device."""

    name: str

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Run a command on the device; (exit code, stdout, stderr)."""

    def put(self, local: Path, remote: str) -> None:
        """Copy a file to the device."""

    def close(self) -> None:
        """Release the connection."""


def local_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def env_prefix(env: dict[str, str] | None) -> list[str]:
    """``env K=V ...`` in front of a command (every POSIX device has env)."""
    return ["env", *[f"{k}={v}" for k, v in (env or {}).items()]] if env else []


class RemoteTarget:
    """Runs the device runner through a transport."""

    def __init__(self, transport: Transport, *, python: str = "python3", workdir: str = "/tmp/kd-edge-bench",
                 emulated: bool = False, name: str | None = None, tflite_benchmark_model: str | None = None):
        self.transport, self.python, self.workdir, self.emulated = transport, python, workdir.rstrip("/"), emulated
        self.tflite_benchmark_model = tflite_benchmark_model
        self.name = name or transport.name
        self._checked: set[str] = set()

    # -- preparing the device ---------------------------------------------------------------------------------
    def _sh(self, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        return self.transport.run(env_prefix(env) + argv, timeout)

    def check_python(self, runtime: str) -> None:
        """Fail with what to install when the device lacks Python, numpy or the runtime."""
        if runtime in self._checked:
            return
        modules, package = runtime_needs(runtime)
        code = "import sys, numpy; print(sys.version_info[:2])"
        rc, out, err = self._sh([self.python, "-c", code])
        if rc != 0:
            if "numpy" in err:
                raise TargetError(f"{self.name}: {self.python} has no numpy; install it on the device: "
                                  f"{self.python} -m pip install numpy")
            raise TargetError(f"{self.name}: cannot run '{self.python}' ({(err or out).strip().splitlines()[-1:] or 'no output'}); "
                              "install Python 3 on the device or name its interpreter in bench.python (python: in "
                              "a profile)", keys=("bench.python",))
        # imported, not only found: a broken install fails here rather than inside every benchmark
        probe = (f"import importlib, sys\nfor m in {modules!r}:\n    try:\n        importlib.import_module(m)\n"
                 "        sys.exit(0)\n    except Exception:\n        pass\nsys.exit(1)")
        if self._sh([self.python, "-c", probe])[0] != 0:
            raise TargetError(f"{self.name}: the {runtime} runtime is not installed for {self.python}; install it on "
                              f"the device ({self.python} -m pip install {package}) or name the Python that has it "
                              "in bench.python", keys=("bench.python",))
        self._checked.add(runtime)

    def _free_bytes(self) -> int | None:
        rc, out, _ = self._sh(["df", "-Pk", self.workdir])
        try:
            return int(out.strip().splitlines()[-1].split()[3]) * 1024 if rc == 0 else None
        except (IndexError, ValueError):
            return None

    def upload(self, local: Path) -> str:
        """The path of ``local`` on the device, uploading it unless a copy with its checksum is there."""
        from kd_edge.formats import find_format

        fmt = find_format(local)  # the runner script has none
        if local.is_dir() and fmt is not None and fmt.is_folder:
            # a folder format (GenAI): its files, under their own names, in a folder named by their checksums
            files = sorted(p for p in local.rglob("*") if p.is_file())
            digests = {p: local_sha256(p) for p in files}
            folder = f"{self.workdir}/cache/{hashlib.sha256(''.join(digests.values()).encode()).hexdigest()[:16]}/{local.name}"
            for p in files:
                self._put(p, f"{folder}/{p.relative_to(local).as_posix()}", digests[p])
            return folder
        if local.is_dir():
            raise TargetError(f"{local.name} is a model folder; on {self.name} benchmark exported files")
        companions = fmt.companions(local) if fmt else []
        if companions:
            # files that find each other by name (ONNX weights over the 2 GB protobuf limit in <file>.data)
            # go, under their own names, into a folder of their own
            folder = f"{self.workdir}/cache/{local_sha256(local)[:16]}"
            for other in companions:
                self._put(other, f"{folder}/{other.name}", local_sha256(other))
            return self._put(local, f"{folder}/{local.name}", local_sha256(local))
        digest = local_sha256(local)
        return self._put(local, f"{self.workdir}/cache/{digest[:16]}-{local.name}", digest)

    def _put(self, local: Path, remote: str, digest: str) -> str:
        """Copy ``local`` to ``remote`` unless a file with its checksum is there already."""
        rc, out, _ = self._sh(["sha256sum", remote])
        if rc == 0 and out.split() and out.split()[0] == digest:
            return remote
        self._sh(["mkdir", "-p", remote.rsplit("/", 1)[0]])
        free = self._free_bytes()
        size = local.stat().st_size
        if free is not None and free < size + (16 << 10):
            raise TargetError(f"no space left on {self.name}: {local.name} needs {size / 1e6:.1f} MB, {self.workdir} has "
                              f"{free / 1e6:.1f} MB free; free space there or set the target's workdir")
        try:
            self.transport.put(local, remote + ".part")
        except OSError as e:
            if "No space" in str(e) or getattr(e, "errno", None) == 28:
                raise TargetError(f"no space left on {self.name} while copying {local.name}; free space in {self.workdir}") from e
            raise TargetError(f"copying {local.name} to {self.name} failed: {e}") from e
        rc, _, err = self._sh(["mv", remote + ".part", remote])
        if rc != 0:
            raise TargetError(f"{self.name}: could not move the upload into place ({err.strip()})")
        return remote

    # -- running ---------------------------------------------------------------------------------------------------
    def run(self, runner: Path, model: Path, args: list[str], *, threads: int | None, timeout_s: float) -> dict:
        """Run the device runner on ``model``; return its JSON with the target's name."""
        runtime = args[args.index("--runtime") + 1] if "--runtime" in args else "onnxruntime"
        if runtime == "tflite" and self.tflite_benchmark_model:
            return self._run_native(model, args, threads=threads, timeout_s=timeout_s)
        self.check_python(runtime)
        remote_runner = self.upload(runner)
        remote_model = self.upload(model)
        env = {var: str(threads) for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")} if threads else {}
        if self.emulated:
            env["KD_EDGE_EMULATED"] = "1"
        import time

        t0 = time.perf_counter()
        try:
            rc, out, err = self._sh([self.python, remote_runner, remote_model, *args], timeout=timeout_s, env=env)
        except TimeoutError:
            raise TargetError(f"benchmark of {model.name} on {self.name} took longer than {timeout_s:g} s; raise "
                              "bench.timeout_s or lower bench.runs") from None
        doc = None
        for line in reversed(out.strip().splitlines()):
            if line.strip().startswith("{"):
                try:
                    doc = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
        if doc is None:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise TargetError(f"the runner on {self.name} printed no result for {model.name} (exit {rc}): {last}")
        if "error" in doc:
            raise runner_failure(model.name, self.name, doc)
        doc["target"] = self.name
        doc["process_wall_s"] = round(time.perf_counter() - t0, 3)  # the remote process, start-up and transport included
        if self.emulated:
            doc.setdefault("environment", {})["emulated"] = True
        return doc

    def _run_native(self, model: Path, args: list[str], *, threads: int | None, timeout_s: float) -> dict:
        """A .tflite file through the device's benchmark_model binary."""
        from kd_edge.bench.native import parse_benchmark_model

        def arg(name: str, default: str) -> str:
            return args[args.index(name) + 1] if name in args else default

        batch, seq = int(arg("--batch", "1")), int(arg("--seq", "128"))
        remote_model = self.upload(model)
        cmd = [self.tflite_benchmark_model, f"--graph={remote_model}", f"--num_runs={arg('--runs', '100')}",
               f"--warmup_runs={arg('--warmup', '10')}", f"--signature_to_run_for=b{batch}_s{seq}"]
        if threads:
            cmd.append(f"--num_threads={threads}")
        try:
            rc, out, err = self._sh(cmd, timeout=timeout_s)
        except TimeoutError:
            raise TargetError(f"benchmark_model on {self.name} took longer than {timeout_s:g} s") from None
        if rc == 127 or "not found" in err:
            raise TargetError(f"{self.name} has no {self.tflite_benchmark_model}; push TFLite's benchmark_model there "
                              "or remove tflite_benchmark_model from the profile to use Python")
        doc = parse_benchmark_model(out + "\n" + err, batch=batch)
        if "error" in doc:
            raise TargetError(f"{model.name} on {self.name}: {doc['error']}")
        doc.update({"model": model.name, "seq": seq, "threads": threads, "target": self.name,
                    "file_size_bytes": model.stat().st_size, "environment": {"emulated": self.emulated}})
        return doc

    def close(self) -> None:
        self.transport.close()


def quote(argv: list[str]) -> str:
    """A shell command line with every argument quoted."""
    return " ".join(shlex.quote(a) for a in argv)
