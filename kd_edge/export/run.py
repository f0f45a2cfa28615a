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
from kd_edge.export import EXPORTERS
from kd_edge.formats import format_named, load
from kd_edge.quantize import QUANTIZERS
from kd_edge.runfiles import ArtifactFiles, RunFiles, student_meta
from kd_edge.tasks import TASKS
from kd_edge.tasks.hub import read_config
from kd_edge.tasks.kinds import ModelSource, task_kind

if TYPE_CHECKING:
    from kd_edge.config import Recipe

FALLBACK_TEXTS = 1000  # training texts on which an int8 file is compared with the fp32 file


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


def make_artifacts(module, model_config: dict, cfg, out: Path, *, source_dir: Path, input_names: tuple[str, ...],
                   output_name: str, common: dict, logs: Path, fp32_tolerance: float, seed: int = 0,
                   calibration: Callable[[], list[dict]] | None = None, fallback: "Fallback | None" = None,
                   budgets: Callable[[int], float] = lambda bits: 0.01) -> list[dict]:
    """Write every ``cfg.artifacts`` file of ``module`` (the model folder ``source_dir`` for formats
    converted from it) and its sidecar into ``out``; return the sidecars. ``budgets(bits)`` is the
    largest metric drop a file of that many bits may keep before its fallback engages.

    Shared by the export stage of a run and by ``kd-edge export MODEL_DIR``."""
    formats = [format_named(f) for f in dict.fromkeys(a.format for a in cfg.artifacts)]
    base: dict[str, tuple[Path, dict]] = {}
    for fmt in formats:
        exporter = EXPORTERS.get(fmt.name)()
        path = out / f"_base.fp32{fmt.suffix}"
        t0 = time.perf_counter()
        info = exporter.export(module, path, input_names=input_names, output_name=output_name,
                               opset=cfg.opset, shapes=cfg.tflite_shapes, kv_cache_size=cfg.kv_cache_size,
                               context_length=cfg.context_length,
                               source_dir=source_dir, log_path=logs / f"export-{fmt.name}.log", calibration=calibration,
                               precisions=tuple(a.precision for a in cfg.artifacts if a.format == fmt.name))
        info = {**common, "format": fmt.name, "runtime": fmt.runtime, **info,
                "export_seconds": round(time.perf_counter() - t0, 2)}
        base[fmt.name] = (path, info)
    fused: dict[str, tuple[Path, dict]] = {}

    def float_graph(fmt) -> tuple[Path, dict]:
        """The graph fp32 and fp16 files are made from, and what the sidecar says of it: the format's
        fusions of the base where they keep parity (made once), else the base."""
        src = base[fmt.name][0]
        if fmt.fuse is None:
            return src, {}
        if fmt.name not in fused:
            fused[fmt.name] = (load(fmt.fuse)(src, out / f"_fused{fmt.suffix}", model_config, fp32_tolerance,
                                              seed=seed)
                               if cfg.optimize else (src, {"fusions": None, "fusions_note": "export.optimize is off"}))
        return fused[fmt.name]

    sidecars = []
    files = ArtifactFiles(out)
    for spec in cfg.artifacts:
        fmt = format_named(spec.format)
        prec = fmt.precision(spec.precision)
        src, info = base[spec.format]
        path = files.file(spec.name)
        t0 = time.perf_counter()
        if prec.make is None:
            graph, extra = float_graph(fmt)
            fmt.copy(graph, path)
        else:
            quantize = QUANTIZERS.get(f"{spec.format}:{spec.precision}")
            graph, notes = float_graph(fmt) if prec.bits == 16 else (src, {})
            kw = {"per_channel": cfg.int8_per_channel, "log_path": logs / f"quantize-{spec.name}.log",
                  "source_dir": source_dir, "context_length": cfg.context_length,
                  "calibration": calibration() if spec.precision == "int8-static" and calibration else None}
            extra = {**quantize(graph, path, **kw), **notes}
            if prec.checked_at_export and cfg.int8_fallback and fallback is not None:
                extra.update(_fall_back(spec, prec, src, info, path, quantize, kw, fallback, budgets(prec.bits)))
        info = {**info, **extra, "export_seconds": round(info["export_seconds"] + time.perf_counter() - t0, 2)}
        sidecar = {"name": spec.name, "precision": spec.precision, **info, "size_bytes": fmt.size(path)}
        weights = fmt.weights_size(path)
        if weights != sidecar["size_bytes"]:  # a folder: what of it is the model
            sidecar["weights_bytes"] = weights
        write_json(files.sidecar(spec.name), sidecar)
        sidecars.append(sidecar)
    for leftover in out.glob("_*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    bundle(source_dir, out)
    return sidecars


# what an app needs beside an exported file to use it: the tokenizer (AutoTokenizer.from_pretrained on
# the folder, or the tokenizers library on tokenizer.json) and a causal LM's generation settings
BUNDLE = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
          "merges.txt", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json",
          "chat_template.jinja", "generation_config.json")


def bundle(source_dir: Path, out: Path) -> list[str]:
    """Copy the model folder's tokenizer files and generation settings beside the exported files."""
    copied = []
    for name in BUNDLE:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, out / name)
            copied.append(name)
    return copied


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
        make_artifacts(task.export_module(model, meta), read_config(sdir), cfg, out, source_dir=sdir,
                       input_names=task.input_names, output_name=task.output_name, common=common,
                       logs=run_files.logs, fp32_tolerance=recipe.verify.fp32_atol, seed=recipe.seed,
                       calibration=lambda: _calibration(ctx.run_dir, recipe, task.input_names),
                       fallback=Fallback(recipe, ctx.run_dir),
                       budgets=recipe.verify.max_metric_drop)


def _fall_back(spec, prec, src: Path, info: dict, path: Path, quantize, kw: dict, fallback: Fallback,
               budget: float) -> dict:
    """Measure the quantized file; past the budget, quantize again with more kept in float, as the
    precision's fallback says (kd_edge/export/fallback.py, or the format's own module). Returns what
    the sidecar records: the drop at each attempt, and what was kept in float."""
    this = {**info, "name": spec.name, "precision": spec.precision}  # the quantized file's sidecar so far
    drop, metric = fallback.drop(spec.format, src, info, path, this)
    tried = [{"nodes_in_float": 0, "drop": round(drop, 5)}]
    check = {"int8_check": {"metric": metric, "texts": "train", "tried": tried}}
    if drop <= budget:
        return check
    if prec.fallback is None:
        unit = "%" if metric == "perplexity" else "pt"
        return {**check, "fallback": {"engaged": False, "reason": f"{metric} drop {drop * 100:.2f} {unit} > budget and "
                                                                 f"{spec.format} {spec.precision} has no lighter recipe"}}

    def measure() -> float:
        return fallback.drop(spec.format, src, info, path, this)[0]

    return {**load(prec.fallback)(src, path, spec.precision, quantize, kw, measure, budget, tried), **check}
