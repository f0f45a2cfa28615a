"""ONNX files over the 2 GB protobuf limit: weights in one ``<file>.data`` beside the graph.

A protobuf message cannot exceed 2 GB, so a larger model keeps its tensors in an external data file.
Every step that writes an ONNX file (export, copy, fusion, quantization) goes through here so that
such a model stays one ``.onnx`` plus one ``.onnx.data`` under the artifact's own name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2  # 2 GB less room for the graph itself


def data_file(path: Path) -> Path:
    """Where the external weights of ``path`` live."""
    return path.with_name(path.name + ".data")


def is_external(path: Path) -> bool:
    """Whether ``path`` keeps its weights in an external data file."""
    return data_file(path).is_file()


def needs_external(weight_bytes: int) -> bool:
    """Whether a model with this many bytes of weights must use external data."""
    return weight_bytes > PROTO_LIMIT


def save(model, path: Path, external: bool, inline_below: int = 0) -> None:
    """Write an ``onnx.ModelProto`` to ``path``; with ``external``, every tensor of ``inline_below`` bytes
    or more goes to ``<path>.data``."""
    import onnx

    data = data_file(path)
    if data.exists():
        data.unlink()
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=inline_below)
        data.chmod(0o644)  # onnx writes external data readable by its owner only; the graph beside it is not
    else:
        onnx.save_model(model, str(path))


def consolidate(path: Path, external: bool) -> None:
    """Rewrite ``path`` (and whatever external files the exporter wrote beside it) as one graph file,
    plus ``<path>.data`` when ``external``."""
    import onnx

    graph_only = onnx.load(str(path), load_external_data=False)
    leftovers = {Path(e.value) for t in graph_only.graph.initializer for e in t.external_data if e.key == "location"}
    model = onnx.load(str(path))  # reads any external data the exporter wrote into the same folder
    save(model, path, external)
    for name in leftovers:
        other = path.parent / name
        if other != data_file(path) and other.exists():
            other.unlink()


def copy(src: Path, dst: Path) -> None:
    """Copy an ONNX file under a new name, its external data renamed with it."""
    if not is_external(src):
        shutil.copyfile(src, dst)
        return
    import onnx

    save(onnx.load(str(src)), dst, external=True)


def size(path: Path) -> int:
    """Bytes of the graph and its external data."""
    return path.stat().st_size + (data_file(path).stat().st_size if is_external(path) else 0)


def remove(path: Path) -> None:
    """Delete an ONNX file and its external data."""
    for p in (path, data_file(path)):
        if p.exists():
            os.unlink(p)
