"""The ``export`` stage: write every requested format x precision of the student into artifacts/.

Each format is exported once at fp32 (the unfused base). ONNX float files then get ONNX Runtime's
transformer fusions where the fused graph still matches; every other precision is made from the base
by its quantizer. An int8 file whose task metric falls more than ``verify.int8_max_metric_drop`` below
the fp32 file's, on training texts, is made again with sensitive nodes kept in float.

Each file gets a sidecar ``<file>.json`` saying what it is (format, precision, runtime, inputs,
signatures, fusions, fallback) so that verify, bench and report need no other source of truth.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.export import EXPORTERS, onnx_files
from kd_edge.quantize import QUANTIZERS
from kd_edge.runfiles import ArtifactFiles, RunFiles, student_meta
from kd_edge.tasks import TASKS
from kd_edge.tasks.hub import read_config
from kd_edge.tasks.kinds import ModelSource, task_kind

if TYPE_CHECKING:
    from kd_edge.config import Recipe

FUSION_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert"}
FALLBACK_TEXTS = 1000  # training texts on which an int8 file is compared with the fp32 file


def fused_graph(base: Path, out: Path, config: dict, tolerance: float, sample: Callable[[], dict]) -> tuple[Path, dict]:
    """ONNX Runtime's fusions of ``base`` written to ``out`` if the fused graph matches the base within
    ``tolerance`` on sample inputs; returns the graph to use and what the sidecar says about it."""
    import onnxruntime as ort

    from kd_edge.quantize.onnx_precisions import fuse

    model_type = FUSION_MODEL_TYPES.get(config.get("model_type", ""))
    if model_type is None:
        return base, {"fusions": None, "fusions_note": f"no ONNX Runtime fusions for model_type "
                                                        f"'{config.get('model_type')}'"}
    try:
        counts = fuse(base, out, model_type=model_type, num_heads=config["num_attention_heads"],
                      hidden_size=config["hidden_size"])
        feeds = sample()
        opts = {"providers": ["CPUExecutionProvider"]}
        a = ort.InferenceSession(str(base), **opts).run(None, feeds)[0]
        b = ort.InferenceSession(str(out), **opts).run(None, feeds)[0]
        diff = float(np.abs(a - b).max())
    except Exception as e:  # fusion is an optimisation: the unfused graph is always a valid answer
        onnx_files.remove(out)
        return base, {"fusions": None, "fusions_note": f"fusion failed ({type(e).__name__}); kept the unfused graph"}
    if diff > tolerance:
        onnx_files.remove(out)
        return base, {"fusions": None, "fusions_note": f"fused graph differed by {diff:.1e} > {tolerance:.0e}; "
                                                        "kept the unfused graph"}
    return out, {"fusions": counts, "fusions_max_abs_diff": diff}


def _calibration(run_dir: Path, recipe: "Recipe", input_names: tuple[str, ...]) -> list[dict]:
    """Static-int8 calibration feeds: ``export.calibration_size`` training texts, one per feed."""
    from kd_edge.runfiles import CacheReader

    ids = CacheReader(run_dir).ids("train")
    rng = np.random.default_rng(recipe.seed)
    pick = rng.permutation(len(ids))[:recipe.export.calibration_size]
    feeds = []
    for i in pick:
        seq = np.asarray(ids[i], np.int64)[None, :]
        feed = {"input_ids": seq, "attention_mask": np.ones_like(seq)}
        feeds.append({n: feed[n] for n in input_names})
    return feeds


class Fallback:
    """Decides whether an int8 file keeps enough of the fp32 file's quality, on training texts."""

    LM_TEXTS = 200  # causal LMs: perplexity through the file on this many training texts

    def __init__(self, recipe: "Recipe", run_dir: Path):
        self.recipe, self.run_dir = recipe, run_dir
        self._checkers: dict[str, object] = {}
        self._ppl: dict[tuple[Path, int], float] = {}  # (file, mtime) -> perplexity

    def _perplexity(self, path: Path, info: dict) -> float:
        """Perplexity of a causal-LM file on training texts, through its own runtime (cached per file)."""
        from kd_edge.runfiles import CacheReader
        from kd_edge.checks.causal_lm import decoder, perplexity

        key = (path, path.stat().st_mtime_ns)
        if key not in self._ppl:
            ids = CacheReader(self.run_dir).ids("train")
            texts = [np.asarray(ids[i], np.int64) for i in range(min(len(ids), self.LM_TEXTS)) if len(ids[i]) > 1]
            self._ppl[key] = perplexity(decoder(path, info, self.recipe.bench.threads), texts)
        return self._ppl[key]

    def checker(self, fmt: str, base: Path, info: dict):
        from kd_edge.checks.encoder import Checker

        if fmt not in self._checkers:
            checker = Checker(self.recipe, self.run_dir, split="train", limit=FALLBACK_TEXTS)
            checker.use_reference(checker.outputs(base, info))
            self._checkers[fmt] = checker
        return self._checkers[fmt]

    def drop(self, fmt: str, base: Path, base_info: dict, path: Path, info: dict) -> tuple[float, str]:
        from kd_edge.checks.verdicts import metric_drop

        if task_kind(self.recipe.task).is_lm:
            return self._perplexity(path, info) / self._perplexity(base, base_info) - 1, "perplexity"
        checker = self.checker(fmt, base, base_info)
        record = checker.measure(path, info)
        metric = checker.metric if checker.metric in record else "agreement_with_student"
        reference = checker.student if metric in checker.student else {metric: 1.0}
        return metric_drop(reference, record, metric), metric


def sample_feeds(vocab_size: int, seed: int = 0) -> dict:
    """Two token sequences (one padded) to compare graphs on."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, max(6, min(vocab_size, 30000)), (2, 48)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def make_artifacts(module, model_config: dict, cfg, out: Path, *, input_names: tuple[str, ...], output_name: str,
                   common: dict, logs: Path, fp32_tolerance: float, seed: int = 0,
                   calibration: Callable[[], list[dict]] | None = None, fallback: "Fallback | None" = None,
                   budget: float = 0.01) -> list[dict]:
    """Write every ``cfg.artifacts`` file of ``module`` and its sidecar into ``out``; return the sidecars.

    Shared by the export stage of a run and by ``kd-edge export MODEL_DIR``."""
    formats = list(dict.fromkeys(a.format for a in cfg.artifacts))
    base: dict[str, tuple[Path, dict]] = {}
    for fmt in formats:
        exporter = EXPORTERS.get(fmt)()
        path = out / f"_base.fp32{exporter.suffix}"
        t0 = time.perf_counter()
        info = exporter.export(module, path, input_names=input_names, output_name=output_name,
                               opset=cfg.opset, shapes=cfg.tflite_shapes, kv_cache_size=cfg.kv_cache_size,
                               log_path=logs / f"export-{fmt}.log")
        info = {**common, "format": fmt, "runtime": exporter.runtime, **info,
                "export_seconds": round(time.perf_counter() - t0, 2)}
        base[fmt] = (path, info)
    fused: dict[str, tuple[Path, dict]] = {}

    def float_graph(fmt: str) -> tuple[Path, dict]:
        """The graph fp32 and fp16 files are made from, and what the sidecar says of it: for ONNX the
        fused graph where fusion keeps parity (made once), else the base."""
        src = base[fmt][0]
        if fmt != "onnx":
            return src, {}
        if fmt not in fused:
            fused[fmt] = (fused_graph(src, out / "_fused.onnx", model_config, fp32_tolerance,
                                      lambda: sample_feeds(model_config.get("vocab_size", 1000), seed))
                          if cfg.optimize else (src, {"fusions": None, "fusions_note": "export.optimize is off"}))
        return fused[fmt]

    sidecars = []
    files = ArtifactFiles(out)
    for spec in cfg.artifacts:
        src, info = base[spec.format]
        path = files.file(spec.name)
        t0 = time.perf_counter()
        if spec.precision == "fp32":
            graph, extra = float_graph(spec.format)
            (onnx_files.copy if spec.format == "onnx" else shutil.copyfile)(graph, path)
        else:
            quantize = QUANTIZERS.get(f"{spec.format}:{spec.precision}")
            graph, notes = float_graph(spec.format) if spec.precision == "fp16" else (src, {})
            kw = {"per_channel": cfg.int8_per_channel, "log_path": logs / f"quantize-{spec.name}.log",
                  "calibration": calibration() if spec.precision == "int8-static" and calibration else None}
            extra = {**quantize(graph, path, **kw), **notes}
            if spec.precision.startswith("int8") and cfg.int8_fallback and fallback is not None:
                extra.update(_fall_back(spec, src, info, path, quantize, kw, fallback, budget))
        info = {**info, **extra, "export_seconds": round(info["export_seconds"] + time.perf_counter() - t0, 2)}
        size = onnx_files.size(path) if spec.format == "onnx" else path.stat().st_size
        sidecar = {"name": spec.name, "precision": spec.precision, **info, "size_bytes": size}
        write_json(files.sidecar(spec.name), sidecar)
        sidecars.append(sidecar)
    for leftover in out.glob("_*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return sidecars


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write artifacts/student.<precision>.<format> and their sidecars."""
    cfg = recipe.export
    task = TASKS.get(recipe.task)()
    run_files = RunFiles(ctx.run_dir)
    sdir = run_files.student
    meta = student_meta(sdir)
    model = task.load_model(ModelSource(sdir), eager=True)
    common = {"task": recipe.task, "params": sum(p.numel() for p in model.parameters()),
              "pooling": meta.get("pooling"), "normalize": meta.get("normalize"), "source": "student/"}
    with atomic_dir(run_files.artifacts.path) as out:
        make_artifacts(task.export_module(model, meta), read_config(sdir), cfg, out,
                       input_names=task.input_names, output_name=task.output_name, common=common,
                       logs=run_files.logs, fp32_tolerance=recipe.verify.fp32_atol, seed=recipe.seed,
                       calibration=lambda: _calibration(ctx.run_dir, recipe, task.input_names),
                       fallback=Fallback(recipe, ctx.run_dir),
                       budget=recipe.verify.int8_max_metric_drop)


def _fall_back(spec, src: Path, info: dict, path: Path, quantize, kw: dict, fallback: Fallback, budget: float) -> dict:
    """Quantize again with more nodes in float while the metric drop exceeds the budget; return
    what the sidecar records (the drop at each level, the nodes kept in float)."""
    from kd_edge.quantize.onnx_precisions import sensitive_nodes

    this = {**info, "name": spec.name, "precision": spec.precision}  # the int8 file's sidecar so far
    drop, metric = fallback.drop(spec.format, src, info, path, this)
    tried = [{"nodes_in_float": 0, "drop": round(drop, 5)}]
    if drop <= budget:
        return {"int8_check": {"metric": metric, "texts": "train", "tried": tried}}
    if spec.format != "onnx":
        if spec.precision != "int8":
            return {"int8_check": {"metric": metric, "texts": "train", "tried": tried},
                    "fallback": {"engaged": False, "reason": f"{metric} drop {drop * 100:.2f} pt > budget and "
                                                             f"{spec.precision} has no lighter TFLite recipe"}}
        # TFLite: ai-edge-quantizer recipes apply to whole op kinds; the lighter one keeps every
        # activation (and all compute) in float, with the weights still int8.
        path.unlink()
        extra = QUANTIZERS.get("tflite:int8-weights")(src, path, **kw)
        drop, _ = fallback.drop(spec.format, src, info, path, this)
        tried.append({"activations_in_float": True, "drop": round(drop, 5)})
        return {**extra, "int8_check": {"metric": metric, "texts": "train", "tried": tried},
                "fallback": {"engaged": True, "level": 1, "kept_in_float": "every activation and all compute "
                             "(int8 weights only)", "nodes": [], "within_budget": drop <= budget}}
    # Dynamic int8 leaves MatMuls of two computed tensors (level 1) in float already.
    for level in (1, 2) if spec.precision == "int8-static" else (2,):
        exclude = sensitive_nodes(src, level)
        onnx_files.remove(path)
        extra = quantize(src, path, **{**kw, "exclude": exclude})
        drop, _ = fallback.drop(spec.format, src, info, path, this)
        tried.append({"nodes_in_float": len(exclude), "drop": round(drop, 5)})
        if drop <= budget:
            break
    kinds = "attention MatMuls (of two computed tensors) everywhere" + (
        "; first and last layers and the output head (their weights too)" if level == 2 else "")
    return {**extra, "int8_check": {"metric": metric, "texts": "train", "tried": tried},
            "fallback": {"engaged": True, "level": level, "kept_in_float": kinds, "nodes": exclude,
                         "within_budget": drop <= budget}}
