"""The ``export`` stage: write every requested format x precision of the student into artifacts/.

Each file gets a sidecar ``<file>.json`` saying what it is (format, precision, runtime, inputs,
signatures) so that verify, bench and report need no other source of truth.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.export import EXPORTERS
from kd_edge.quantize import QUANTIZERS
from kd_edge.runfiles import student_meta
from kd_edge.errors import ExportError
from kd_edge.tasks import TASKS
from kd_edge.tasks.base import ModelSource

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write artifacts/student.<precision>.<format> and their sidecars."""
    cfg = recipe.export
    task = TASKS.get(recipe.task)()
    if recipe.task == "causal_lm" and cfg.artifacts:
        raise ExportError("exporting causal LMs (ONNX with a KV cache, TFLite prefill/decode) is not built yet; "
                          "set export.artifacts: [] for now")
    sdir = ctx.run_dir / "student"
    meta = student_meta(sdir)
    model = task.load_model(ModelSource(sdir), eager=True)
    module = task.export_module(model, meta)
    params = sum(p.numel() for p in model.parameters())
    common = {"task": recipe.task, "params": params, "pooling": meta.get("pooling"),
              "normalize": meta.get("normalize"), "source": "student/"}
    formats = list(dict.fromkeys(a.format for a in cfg.artifacts))
    wanted = {a.name for a in cfg.artifacts}
    with atomic_dir(ctx.run_dir / "artifacts") as out:
        base: dict[str, tuple[Path, dict]] = {}
        for fmt in formats:
            exporter = EXPORTERS.get(fmt)()
            path = out / f"student.fp32{exporter.suffix}"
            t0 = time.perf_counter()
            info = exporter.export(module, path, input_names=task.input_names, output_name=task.output_name,
                                   opset=cfg.opset, shapes=cfg.tflite_shapes,
                                   log_path=ctx.run_dir / "logs" / f"export-{fmt}.log")
            info = {**common, "format": fmt, "runtime": exporter.runtime, **info,
                    "export_seconds": round(time.perf_counter() - t0, 2)}
            base[fmt] = (path, info)
        for spec in cfg.artifacts:
            src, info = base[spec.format]
            path = out / spec.name
            if spec.precision != "fp32":
                t0 = time.perf_counter()
                extra = QUANTIZERS.get(f"{spec.format}:{spec.precision}")(src, path, per_channel=cfg.int8_per_channel)
                info = {**info, **extra, "export_seconds": round(info["export_seconds"] + time.perf_counter() - t0, 2)}
            write_json(out / f"{spec.name}.json", {"name": spec.name, "precision": spec.precision, **info,
                                                  "size_bytes": path.stat().st_size})
        for fmt, (path, _) in base.items():
            if path.name not in wanted:
                path.unlink()
