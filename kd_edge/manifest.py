"""A run folder's manifest (``manifest.json``: per stage its key, outputs, timings, status) and the lock
that keeps two commands from writing one run at once."""

from __future__ import annotations

import contextlib
import fcntl
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from kd_edge.artifacts import file_records, read_json, write_json
from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.runfiles import RunFiles

LIBRARIES = ("torch", "transformers", "accelerate", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert",
             "numpy", "scikit-learn")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a run depends on (no imports)."""
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


class RunDir:
    """A run folder and its manifest."""

    def __init__(self, path: Path, *, fresh: bool = False):
        self.path = path
        self.files = RunFiles(path)
        self.manifest_path = self.files.manifest
        self.manifest: dict[str, Any] = {}
        if self.manifest_path.is_file():
            try:
                self.manifest = read_json(self.manifest_path)
            except (ValueError, UnicodeDecodeError) as e:
                if not fresh:
                    raise ArtifactError(f"{self.manifest_path} is damaged ({type(e).__name__}), so nothing in {path} "
                                        "can be trusted; pass --force to redo every stage there, or choose another "
                                        "--out") from None
            if not isinstance(self.manifest, dict):
                if not fresh:
                    raise ArtifactError(f"{self.manifest_path} is not a kd-edge manifest; pass --force to redo every "
                                        "stage there, or choose another --out")
                self.manifest = {}

    def save(self) -> None:
        """Write the manifest atomically."""
        write_json(self.manifest_path, self.manifest)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run folder: two commands never write one run at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.files.lock, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArtifactError(f"another kd-edge command is using {self.path}; wait for it or choose another --out") from None
            yield

    def stage_record(self, name: str) -> dict[str, Any] | None:
        return self.manifest.get("stages", {}).get(name)

    def outputs_intact(self, record: dict[str, Any], outputs: tuple[str, ...], exclude: tuple[str, ...] = ()) -> bool:
        """True when every recorded output still exists with the recorded content (every file is read
        again: a file changed in place keeps its size and mtime only if someone wants it to); the
        ``exclude`` paths inside them are another stage's."""
        recorded = record.get("outputs") or {}
        if not all((self.files / rel).exists() for rel in outputs):
            return False
        try:
            now = file_records(self.path, list(outputs), exclude=exclude)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return {k: v["sha256"] for k, v in now.items()} == {k: v["sha256"] for k, v in recorded.items()}


def predates_key_format(manifest: dict) -> bool:
    """True for the manifest of a run whose stage keys did not record code (kd-edge before key format 2)."""
    return bool(manifest.get("stages")) and manifest.get("key_format") is None


def older_key_format(path: Path) -> bool:
    """True when ``path`` holds a run whose manifest predates stage key format 2 (its stages are redone once)."""
    files = RunFiles(path)
    try:
        manifest = read_json(files.manifest) if files.manifest.is_file() else None
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    return isinstance(manifest, dict) and predates_key_format(manifest)


def check_out_dir(run: RunDir, recipe_digest: str, *, resume: bool, force: bool) -> None:
    """Refuse to write into a folder holding something else than this run."""
    path = run.path
    if not path.exists() or not any(p for p in path.iterdir() if p != run.files.lock):
        return
    if not run.manifest:
        if force and run.manifest_path.is_file():
            return  # a damaged manifest of ours: --force starts it again
        raise ConfigError(f"--out {path} is not empty and holds no kd-edge run ({run.manifest_path.name} missing); "
                          "choose a new or empty folder")
    if predates_key_format(run.manifest) and not (resume or force):
        raise ConfigError(f"--out {path} holds a run made by an older kd-edge ('{run.manifest.get('name')}'), whose "
                          "stage keys did not record each stage's code, so none of its stages can be trusted as "
                          "up to date; pass --resume to redo them there (once), or choose another --out")
    if run.manifest.get("recipe_digest") != recipe_digest and not (resume or force):
        raise ConfigError(f"--out {path} holds a run of a different recipe ('{run.manifest.get('name')}', or the same "
                          "one edited); pass --resume to keep its still-valid stages, --force to redo every stage, "
                          "or choose another --out")
