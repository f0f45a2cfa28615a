"""Read a text data set (JSONL, CSV/TSV, plain text, a saved `datasets` folder, or the bundled VADER)
into a list of row dicts. Nothing here imports torch."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import Any

from kd_edge.data.config import DataConfig
from kd_edge.errors import ArtifactError, ConfigError, DependencyError

BUNDLED_DIR = Path(__file__).resolve().parent
BUNDLED = {"vader": BUNDLED_DIR / "vader" / "sentences.jsonl.gz"}

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "text"}


def source_path(source: str) -> Path:
    """The file or folder a data source names (bundled names resolve inside the package)."""
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name not in BUNDLED:
            raise ConfigError(f"data.source '{source}' is not a bundled data set; choose from: "
                              + ", ".join(f"bundled:{n}" for n in BUNDLED))
        return BUNDLED[name]
    return Path(source).expanduser()


def detect_format(path: Path, fmt: str) -> str:
    """The format to read ``path`` with."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf_disk"
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext not in _EXTENSIONS:
        raise ConfigError(f"data.source '{path}': cannot tell the format from '{ext or 'no extension'}'; "
                          "set data.format to jsonl, csv, tsv, text or hf_disk")
    return _EXTENSIONS[ext]


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8", newline="")


def read_rows(cfg: DataConfig) -> list[dict[str, Any]]:
    """Read every row of the configured source; an unreadable one is one line naming the file, the
    line and the fix."""
    path = source_path(cfg.source)
    if not path.exists():
        raise ArtifactError(f"data.source '{cfg.source}' does not exist; point data.source at a .jsonl/.csv/.txt "
                            "file or use bundled:vader")
    if not os.access(path, os.R_OK):
        raise ArtifactError(f"data.source '{path}' is not readable (permission denied); make it readable for you "
                            "or copy it somewhere you can read")
    fmt = detect_format(path, cfg.format)
    try:
        return _read_rows(path, fmt, cfg)
    except UnicodeDecodeError as e:
        raise ArtifactError(f"data.source '{path}' is not UTF-8 text ({e.reason} at byte {e.start} of a line); save it "
                            "as UTF-8 (iconv -f latin1 -t utf-8 IN > OUT)") from None
    except csv.Error as e:
        raise ArtifactError(f"data.source '{path}' is not valid {fmt.upper()} ({e}); fix the file or set data.format") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise ArtifactError(f"data.source '{path}' is a damaged .gz file ({type(e).__name__}); compress it again") from None


def _read_rows(path: Path, fmt: str, cfg: DataConfig) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        rows = []
        with _open_text(path) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ArtifactError(f"{path}: line {i} is not valid JSON ({e.msg}); fix or remove that line") from e
                if not isinstance(row, dict):
                    raise ArtifactError(f"{path}: line {i} is not a JSON object; each line must be {{\"text\": ...}}")
                rows.append(row)
        return rows
    if fmt in ("csv", "tsv"):
        with _open_text(path) as f:
            return list(csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ","))
    if fmt == "text":
        with _open_text(path) as f:
            return [{cfg.text_field: line.rstrip("\n")} for line in f if line.strip()]
    if fmt == "hf_disk":
        try:
            import datasets
        except ImportError as e:
            raise DependencyError("reading a saved `datasets` folder needs the datasets library; run: pip install datasets") from e
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # a folder the user named: anything unreadable in it is a bad input
            raise ArtifactError(f"data.source '{path}' is not a folder written by datasets' save_to_disk "
                                f"({type(e).__name__}); save it with Dataset.save_to_disk, or point at a .jsonl file") from e
        if isinstance(ds, datasets.DatasetDict):
            ds = datasets.concatenate_datasets(list(ds.values()))
        return [dict(r) for r in ds]
    raise ConfigError(f"data.format '{fmt}' is not supported")


def matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
    """True when every ``where`` column equals the value, or is one of the listed values."""
    for key, want in where.items():
        value = row.get(key)
        if isinstance(want, list):
            if value not in want:
                return False
        elif value != want:
            return False
    return True
