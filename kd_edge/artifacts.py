"""Files on disk: atomic writes, content digests, and the run manifest.

Everything a stage produces goes through ``atomic_dir`` / ``atomic_file``: the output is written under
a temporary name next to its final place and renamed into place only when complete, so an interrupted
stage never leaves something that looks finished, and an older output is replaced in one step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

_CHUNK = 1 << 20
FULL_BELOW = 1 << 20  # a disk with less free space than this (or than 1 % of it) is full


def disk_full(path: Path) -> bool:
    """Whether the disk holding ``path`` (or its nearest existing parent) is full, whatever a library
    that failed on it said."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return False
    return usage.free < min(FULL_BELOW, usage.total // 100)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of an object's canonical JSON form (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def list_files(path: Path) -> list[Path]:
    """``path`` itself when it is a file, else every file below it, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def file_records(root: Path, rel_paths: list[str], known: dict[str, dict] | None = None,
                 exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """Describe every file under ``rel_paths`` (relative to ``root``) by size, mtime and sha256.

    With ``known`` records, a file whose size and mtime match keeps its recorded digest without being
    read again (for inputs outside the run, such as a teacher of several GB). Without them every file
    is read: that is how a resume notices a file changed in place with its size and mtime kept. Files
    are hashed on several threads (hashlib releases the GIL). Paths in ``exclude`` are left out.
    """
    from concurrent.futures import ThreadPoolExecutor

    known = known or {}
    records: dict[str, dict] = {}
    todo: list[tuple[str, Path, os.stat_result]] = []
    for rel in rel_paths:
        for f in list_files(root / rel):
            key = f.relative_to(root).as_posix()
            if key in exclude:
                continue
            st = f.stat()
            old = known.get(key)
            if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
                records[key] = old
            else:
                todo.append((key, f, st))
    if todo:
        workers = min(len(todo), os.cpu_count() or 1, 8)
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(lambda item: sha256_file(item[1]), todo))
        for (key, _, st), digest in zip(todo, digests):
            records[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return {k: records[k] for k in sorted(records)}


def digest_records(records: dict[str, dict]) -> str:
    """One digest for a set of file records (content only: names and sha256s)."""
    return sha256_json({k: v["sha256"] for k, v in sorted(records.items())})


def digest_tree(path: Path, known: dict[str, dict] | None = None) -> tuple[str, dict[str, dict]]:
    """Digest of a file or folder outside the run (a teacher, a data file), with its file records."""
    records = file_records(path.parent, [path.name], known)
    return digest_records(records), records


_TMP = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")

# Fault injection for the resume tests (tests/test_resume.py): while the stage named by the
# environment variable KD_EDGE_FAULT_STAGE runs, its first output that is complete but not yet renamed
# into place writes KD_EDGE_FAULT_MARKER and waits there for the test's SIGKILL. Unset, nothing happens.
FAULT_ARMED = False


def fault_point() -> None:
    global FAULT_ARMED
    if not FAULT_ARMED:
        return
    FAULT_ARMED = False
    marker = os.environ.get("KD_EDGE_FAULT_MARKER")
    if marker:
        Path(marker).write_text("waiting for SIGKILL")
    import time

    while True:
        time.sleep(1)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def remove_leftovers(root: Path) -> list[Path]:
    """Remove the temporary outputs (named by ``_tmp_name``: a dot, the name, ``.tmp-`` and eight
    hex digits) that a killed process left under ``root``: a stage killed with SIGKILL cannot clean
    up after itself. Call it only while holding the folder's lock, so that no live writer's
    temporary is taken."""
    removed = []
    if not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if _TMP.match(d)] + [f for f in files if _TMP.match(f)]:
            path = Path(folder) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        dirs[:] = [d for d in dirs if not _TMP.match(d)]
    return removed


def replace_path(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing whatever is there (file or folder) as close to atomically as
    the filesystem allows: a folder is first renamed aside, then the new one renamed in."""
    if dst.is_dir() and not dst.is_symlink():
        trash = _tmp_name(dst)
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path``, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        fault_point()
    except BaseException as e:
        _discard(tmp, path, e, lambda: shutil.rmtree(tmp, ignore_errors=True))
        raise
    replace_path(tmp, path)


def _discard(tmp: Path, path: Path, err: BaseException, remove) -> None:
    """Remove a failed write's temporary output. When the disk under it is full and the failure was
    not an OSError already (a library that hit ENOSPC and said so its own way, as torch.save's
    "unexpected pos ..."), say so as the operating system would: the disk is looked at before the
    partial output is removed, which frees it."""

    full = isinstance(err, Exception) and not isinstance(err, OSError) and disk_full(tmp)
    remove()
    if full:
        raise OSError(28, "No space left on device", str(path)) from err


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces ``path``, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        fault_point()
    except BaseException as e:
        _discard(tmp, path, e, lambda: tmp.unlink(missing_ok=True))
        raise
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def file_size_mb(path: Path) -> float:
    """Total size in MB (10^6 bytes) of a file or of every file in a folder."""
    return sum(f.stat().st_size for f in list_files(Path(path))) / 1e6


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process as set by `accelerate launch` / torchrun; (0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass(frozen=True)
class StageContext:
    """What the pipeline hands a stage besides the recipe: where the run lives and the stage's key
    (a digest of its configuration and inputs, recorded in checkpoints and caches so that nothing made
    for other inputs is reused)."""

    run_dir: Path
    key: str
    progress: bool = True
    fresh: bool = False  # --force: ignore checkpoints and caches left by an earlier attempt
