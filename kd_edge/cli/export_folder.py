"""What `kd-edge export MODEL_DIR` does: export any Hugging Face model folder outside a run.

It writes the same files (and sidecars) as a run's export stage (``export/run.py: make_artifacts``),
then checks each against the PyTorch model on real sentences (the bundled VADER test texts, or
``--texts``): max and mean |Δ| (against the model computed in float64, see checks/reference.py),
agreement (same class, or embedding cosine > 0.99) and a verdict by precision. A causal LM gets the
verify stage's checks: logits as a prompt and token by token over its cache, perplexity, greedy
generation. Nothing in the output folder is replaced unless ``--force`` is given.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kd_edge.artifacts import atomic_dir, write_json
from kd_edge.data.packed import Packed
from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.export.capture import captured
from kd_edge.verify.config import VerifyConfig
from kd_edge.checks.reference import REFERENCE, Parity, exact_outputs, fp32_reason, outputs

if TYPE_CHECKING:
    from kd_edge.tasks.kinds import EncoderKind

TEXTS = 200  # sentences to verify on


def read_texts(path: Path | None, limit: int = TEXTS) -> list[str]:
    """Sentences to verify or calibrate on: a JSONL file with a ``text`` field, a plain text file
    (one per line), or by default the bundled VADER test sentences."""
    from kd_edge.data.loaders import _open_text, source_path

    path = path or source_path("bundled:vader")
    if not path.is_file():
        raise ConfigError(f"texts file '{path}' does not exist; pass a .jsonl with a 'text' field or a .txt file")
    texts = []
    with _open_text(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if ".jsonl" in path.suffixes:
                try:
                    line = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"{path}: a line is not a JSON object with a 'text' field; write one "
                                      "{\"text\": ...} per line, or pass a .txt file") from None
            texts.append(line)
            if len(texts) >= limit:
                break
    if not texts:
        raise ConfigError(f"{path} holds no text")
    return texts


def tokenize(model_dir: Path, texts: list[str], max_length: int) -> Packed:
    """Token ids of ``texts`` with the model folder's own tokenizer."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ArtifactError(f"cannot load the tokenizer of {model_dir} ({type(e).__name__}); pass --tokenizer "
                            "with the folder that holds it") from e
    return Packed.from_lists([tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts],
                             dtype=np.int64)


def compare(kind: "EncoderKind", got: np.ndarray, ref: np.ndarray, precision: str, parity: Parity,
            pytorch_fp32: float | None = None) -> dict:
    """|Δ|, agreement and the verdict of an artifact's outputs against the reference outputs (the
    model in float64, whose fp32 PyTorch run is ``pytorch_fp32`` from it); ``parity`` may already
    hold other comparisons of the file (its other TFLite signatures)."""
    diff = np.abs(got - ref)
    parity.add(got, ref)
    agreement = kind.agreement(got, ref, None, None)  # no labels here: the class, or embedding cosine > 0.99
    what = "same class as the model" if kind.label_kind == "class" else "embeddings with cosine > 0.99 to the model's"
    record = {**parity.record(), "mean_abs_diff": float(diff.mean()), "agreement": agreement}
    if precision == "fp32":
        ok, reason = fp32_reason(record, pytorch_fp32)
    else:
        ok = agreement >= 0.98
        reason = f"{agreement * 100:.1f} % {what} ({'≥' if ok else '<'} 98 %)"
    return {**record, "passed": ok, "reason": reason}


def export_model_dir(model_dir: Path, out: Path, cfg, *, task: str | None = None, texts: Path | None = None,
                     max_length: int = 128, force: bool = False, trust_remote_code: bool = False,
                     allow_pickle: bool = False) -> list[dict]:
    """Export ``model_dir`` to every ``cfg.artifacts`` file in ``out`` and check each; return the records."""
    from kd_edge.export.run import make_artifacts
    from kd_edge.formats import check_export, format_named, precision_of
    from kd_edge.runfiles import ArtifactFiles
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.hub import read_config, sentence_transformers_pooling
    from kd_edge.tasks.kinds import ModelSource, kind_of_config, task_kind

    model_dir = Path(model_dir).resolve()  # converters run in other folders
    if not (model_dir / "config.json").is_file():
        raise ArtifactError(f"'{model_dir}' is not a model folder (no config.json); pass a folder written by "
                            "save_pretrained, or a kd-edge run folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise ArtifactError(f"'{out}' already holds files; pass --force to replace them or another --out")
    config = read_config(model_dir)
    kind = task_kind(task) if task else kind_of_config(config)
    task = kind.name
    max_length = min(max_length, config.get("max_position_embeddings") or max_length)
    if kind.is_lm:
        cfg = _lm_export_config(cfg)
    check_export(kind, cfg)
    if kind.is_lm:
        if any(format_named(a.format).lm_buckets for a in cfg.artifacts):  # every text must fit a prefill length
            max_length = min(max_length, max(s for _, s in cfg.tflite_shapes))
    adapter = TASKS.get(task)()
    pooling, normalize = sentence_transformers_pooling(model_dir)
    meta = {"pooling": pooling or "mean", "normalize": bool(normalize) if normalize is not None else True}
    model = adapter.load_model(ModelSource(model_dir, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
                               eager=True).eval()
    module = adapter.export_module(model, meta)
    ids = tokenize(model_dir, read_texts(texts), max_length)
    if not kind.is_lm and any(a.format == "tflite" for a in cfg.artifacts):  # every text must fit a bucket: say so now
        from kd_edge.checks.encoder import fitting_bucket
        from kd_edge.export.tflite import signature_name

        buckets = sorted((s, signature_name(b, s)) for b, s in cfg.tflite_shapes if b == 1)
        if buckets:
            fitting_bucket(max(len(ids[i]) for i in range(len(ids))), buckets)
    calibration = lambda: [{"input_ids": np.asarray(ids[i])[None], "attention_mask": np.ones((1, len(ids[i])), np.int64)}  # noqa: E731
                           for i in range(min(len(ids), cfg.calibration_size))]
    common = {"task": task, "params": sum(p.numel() for p in model.parameters()), "source": str(model_dir),
              **({"pooling": meta["pooling"], "normalize": meta["normalize"]} if kind.output_field == "pooled" else {})}
    tolerance = VerifyConfig()  # the verify stage's defaults: fp32 within 1e-4 + 1e-5·|model|
    check, pytorch_fp32 = (_lm_checker(model, ids, tolerance) if kind.is_lm
                           else _encoder_checker(kind, module, ids, config, adapter.output_name, tolerance))
    records = []
    with atomic_dir(out) as tmp, _logs_kept_on_failure(tmp / "logs", out):
        sidecars = make_artifacts(module, config, cfg, tmp, source_dir=model_dir, input_names=adapter.input_names,
                                  output_name=adapter.output_name, common=common, logs=tmp / "logs",
                                  fp32_tolerance=tolerance.fp32_atol, calibration=calibration)
        for side in sidecars:
            record = {"name": side["name"], "format": side["format"], "precision": side["precision"],
                      "runtime": side["runtime"], "size_mb": side["size_bytes"] / 1e6,
                      **check(ArtifactFiles(tmp).file(side["name"]), side, tmp / "logs")}
            hint = precision_of(side).hint  # what a run's fallback would do
            if not record["passed"] and hint:
                record["reason"] += f"; {hint}"
            records.append(record)
        write_json(tmp / "verify.json", {"model": str(model_dir), "task": task, "reference": REFERENCE,
                                         "pytorch_fp32_max_abs_diff": pytorch_fp32, "artifacts": records})
    return records


@contextlib.contextmanager
def _logs_kept_on_failure(logs: Path, out: Path):
    """On a failed export the half-written folder goes, but its converter logs stay, in
    ``<out>.failed-logs/``, and the error names them there."""
    from kd_edge.errors import KdEdgeError

    try:
        yield
    except KdEdgeError as e:
        if logs.is_dir() and any(logs.iterdir()):
            kept = out.parent / f"{out.name}.failed-logs"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(logs, kept)
            e.args = tuple(str(a).replace(str(logs), str(kept)) if isinstance(a, str) else a for a in e.args)
        raise


def _lm_export_config(cfg):
    """A causal LM's export settings with room to generate after the longest prefill (TFLite, pte)."""
    from kd_edge.formats import format_named

    longest = max(s for _, s in cfg.tflite_shapes)
    if any(format_named(a.format).lm_buckets for a in cfg.artifacts) and longest >= cfg.kv_cache_size:
        cfg = cfg.model_copy(update={"kv_cache_size": 2 * longest})
    return cfg


def _encoder_checker(kind: "EncoderKind", module, ids: Packed, config: dict, output_name: str, tolerance):
    """A function (file, sidecar, logs) -> record for an encoder (outputs on every text against the
    model in float64, every TFLite signature too; agreement; verdict), and PyTorch's own fp32 |Δ|."""
    from kd_edge.checks.encoder import file_outputs, signature_diffs

    pad_id = config.get("pad_token_id") or 0
    fp32, ref = outputs(module, ids), exact_outputs(module, ids)
    pytorch_fp32 = float(np.abs(fp32 - ref).max())

    def check(path: Path, side: dict, logs: Path) -> dict:
        got = file_outputs(path, side, ids, pad_id, None, logs / "verify-tflite.log")
        sig, parity = {}, Parity(tolerance.fp32_atol, tolerance.fp32_rtol)
        if len(side.get("signatures", [])) > 1:  # a fixed-shape file: every signature, batched ones too
            sig = signature_diffs(path, ids, pad_id, None, side["signatures"], ref, logs / "verify-tflite.log",
                                  parity=parity)
        record = {"n_texts": len(ids), "outputs_compared": [output_name],
                  **compare(kind, got, ref, side["precision"], parity, pytorch_fp32=pytorch_fp32)}
        return {**record, "signature_max_abs_diff": sig} if sig else record

    return check, pytorch_fp32


def _lm_checker(model, ids: Packed, cfg):
    """A function (file, sidecar, logs) -> record for a causal LM (the verify stage's checks: logits
    |Δ| as a prompt and token by token, perplexity, greedy generation; verdict by its defaults), and
    PyTorch's own fp32 |Δ|."""
    from kd_edge.checks.causal_lm import LMChecker

    texts = [np.asarray(ids[i], np.int64) for i in range(len(ids)) if len(ids[i]) > 1]
    checker = LMChecker(model, texts)
    skip = ("name", "format", "precision", "runtime")

    def check(path: Path, side: dict, logs: Path) -> dict:
        with captured(logs / f"verify-{side['format']}.log"):  # runtimes announce themselves from C++ (XNNPACK)
            record = checker.measure(path, side, cfg)
        return {"n_texts": len(texts), "outputs_compared": ["logits"], "model_perplexity": checker.student["perplexity"],
                **{k: v for k, v in record.items() if k not in skip}}

    return check, checker.student["pytorch_fp32_max_abs_diff"]
