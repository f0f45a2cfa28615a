"""Export and quantize outside a run: any Hugging Face model folder, any .onnx / .tflite file.

``kd-edge export MODEL_DIR`` writes the same files (and sidecars) as a run's export stage, then checks
each against the PyTorch model on real sentences (the bundled VADER test texts, or ``--texts``):
max and mean |Δ| (against the model computed in float64, see verify/reference.py), agreement (same
class, or embedding cosine > 0.99) and a verdict by precision. A causal LM gets the verify stage's
checks: logits as a prompt and token by token over its cache, perplexity, greedy generation.
``kd-edge quantize FILE`` makes one precision of an exported file and checks it against that file.
Nothing in the output folder is replaced unless ``--force`` is given.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np

from kd_edge.artifacts import atomic_dir, write_json
from kd_edge.data.packed import Packed
from kd_edge.errors import ArtifactError, ConfigError, QuantizeError
from kd_edge.export.capture import captured
from kd_edge.verify.reference import REFERENCE, exact_outputs, fp32_reason, outputs

TEXTS = 200  # sentences to verify on


def detect_task(config: dict) -> str:
    """The task of a model folder, from its architectures."""
    arch = " ".join(config.get("architectures") or [])
    if "ForSequenceClassification" in arch:
        return "sequence_classification"
    if "ForCausalLM" in arch or "LMHeadModel" in arch:
        return "causal_lm"
    return "sentence_embedding"


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
                    raise ConfigError(f"{path}: every line must be a JSON object with a 'text' field") from None
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


def _outputs(path: Path, info: dict, ids: Packed, pad_id: int, log: Path) -> np.ndarray:
    from kd_edge.verify.run import run_onnx, run_tflite

    if info["runtime"] == "onnxruntime":
        return run_onnx(path, ids, pad_id, None)
    return run_tflite(path, ids, pad_id, None, info["signatures"], log)


def compare(task: str, got: np.ndarray, ref: np.ndarray, precision: str, fp32_tolerance: float,
            worst_signature: float = 0.0, pytorch_fp32: float | None = None) -> dict:
    """|Δ|, agreement and the verdict of an artifact's outputs against the reference outputs (the
    model in float64, whose fp32 PyTorch run is ``pytorch_fp32`` from it); ``worst_signature`` is the
    largest |Δ| of any other (TFLite) signature, counted in max |Δ|."""
    diff = np.abs(got - ref)
    if task == "sequence_classification":
        agreement = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
        what = "same class as the model"
    else:
        cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        agreement = float(np.mean(cos > 0.99))
        what = "embeddings with cosine > 0.99 to the model's"
    record = {"max_abs_diff": max(float(diff.max()), worst_signature), "mean_abs_diff": float(diff.mean()),
              "agreement": agreement}
    if precision == "fp32":
        ok, reason = fp32_reason(record["max_abs_diff"], fp32_tolerance, pytorch_fp32)
    else:
        ok = agreement >= 0.98
        reason = f"{agreement * 100:.1f} % {what} ({'≥' if ok else '<'} 98 %)"
    return {**record, "passed": ok, "reason": reason}


def export_model_dir(model_dir: Path, out: Path, cfg, *, task: str | None = None, texts: Path | None = None,
                     max_length: int = 128, force: bool = False, trust_remote_code: bool = False) -> list[dict]:
    """Export ``model_dir`` to every ``cfg.artifacts`` file in ``out`` and check each; return the records."""
    from kd_edge.export.run import make_artifacts
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.base import ModelSource
    from kd_edge.tasks.hub import sentence_transformers_pooling

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ArtifactError(f"'{model_dir}' is not a model folder (no config.json); pass a folder written by "
                            "save_pretrained, or a kd-edge run folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise ArtifactError(f"'{out}' already holds files; pass --force to replace them or another --out")
    config = json.loads(config_path.read_text())
    task = task or detect_task(config)
    max_length = min(max_length, config.get("max_position_embeddings") or max_length)
    if task == "causal_lm":
        cfg = _lm_export_config(cfg)
        if any(a.format == "tflite" for a in cfg.artifacts):  # every text must fit a prefill signature
            max_length = min(max_length, max(s for _, s in cfg.tflite_shapes))
    adapter = TASKS.get(task)()
    pooling, normalize = sentence_transformers_pooling(model_dir)
    meta = {"pooling": pooling or "mean", "normalize": bool(normalize) if normalize is not None else True}
    model = adapter.load_model(ModelSource(model_dir, trust_remote_code=trust_remote_code), eager=True).eval()
    module = adapter.export_module(model, meta)
    ids = tokenize(model_dir, read_texts(texts), max_length)
    calibration = lambda: [{"input_ids": np.asarray(ids[i])[None], "attention_mask": np.ones((1, len(ids[i])), np.int64)}  # noqa: E731
                           for i in range(min(len(ids), cfg.calibration_size))]
    common = {"task": task, "params": sum(p.numel() for p in model.parameters()), "source": str(model_dir),
              **({"pooling": meta["pooling"], "normalize": meta["normalize"]} if task == "sentence_embedding" else {})}
    check, pytorch_fp32 = _lm_checker(model, ids) if task == "causal_lm" else _encoder_checker(task, module, ids, config)
    records = []
    with atomic_dir(out) as tmp:
        sidecars = make_artifacts(module, config, cfg, tmp, input_names=adapter.input_names,
                                  output_name=adapter.output_name, common=common, logs=tmp / "logs",
                                  fp32_tolerance=1e-4, calibration=calibration)
        for side in sidecars:
            record = {"name": side["name"], "format": side["format"], "precision": side["precision"],
                      "runtime": side["runtime"], "size_mb": side["size_bytes"] / 1e6,
                      **check(tmp / side["name"], side, tmp / "logs")}
            if not record["passed"] and side["precision"] == "int8":  # what a run's int8 fallback would do
                record["reason"] += ("; try --precision int8-weights (int8 weights, float activations)"
                                     if side["format"] == "tflite" else
                                     "; try `kd-edge quantize` on the fp32 .onnx with `-p int8 --keep-float 2` (edge layers in float)")
            records.append(record)
        write_json(tmp / "verify.json", {"model": str(model_dir), "task": task, "reference": REFERENCE,
                                         "pytorch_fp32_max_abs_diff": pytorch_fp32, "artifacts": records})
    return records


def _lm_export_config(cfg):
    """The export settings a causal LM can take, or a one-line error."""
    if any(a.precision == "int8-static" for a in cfg.artifacts):
        raise ConfigError("--precision int8-static is for encoders; a causal LM takes fp32, fp16, int8 or int4 (onnx)")
    longest = max(s for _, s in cfg.tflite_shapes)
    if any(a.format == "tflite" for a in cfg.artifacts):
        if any(b != 1 for b, _ in cfg.tflite_shapes):
            raise ConfigError("--shapes: a causal LM's TFLite file takes batch 1 (1xT, one prefill signature per "
                              "length T)")
        if longest >= cfg.kv_cache_size:  # room to generate after the longest prompt
            cfg = cfg.model_copy(update={"kv_cache_size": 2 * longest})
    return cfg


def _encoder_checker(task: str, module, ids: Packed, config: dict):
    """A function (file, sidecar, logs) -> record for an encoder (outputs on every text against the
    model in float64, every TFLite signature too; agreement; verdict), and PyTorch's own fp32 |Δ|."""
    from kd_edge.verify.run import signature_diffs

    pad_id = config.get("pad_token_id") or 0
    fp32, ref = outputs(module, ids), exact_outputs(module, ids)
    pytorch_fp32 = float(np.abs(fp32 - ref).max())

    def check(path: Path, side: dict, logs: Path) -> dict:
        got = _outputs(path, side, ids, pad_id, logs / "verify-tflite.log")
        sig = {}
        if side["runtime"] == "tflite" and len(side["signatures"]) > 1:  # every signature, batched ones too
            sig = signature_diffs(path, ids, pad_id, None, side["signatures"], ref, logs / "verify-tflite.log")
        record = {"n_texts": len(ids), **compare(task, got, ref, side["precision"], 1e-4,
                                                 worst_signature=max(sig.values(), default=0.0),
                                                 pytorch_fp32=pytorch_fp32)}
        return {**record, "signature_max_abs_diff": sig} if sig else record

    return check, pytorch_fp32


def _lm_checker(model, ids: Packed):
    """A function (file, sidecar, logs) -> record for a causal LM (the verify stage's checks: logits
    |Δ| as a prompt and token by token, perplexity, greedy generation; verdict by its defaults), and
    PyTorch's own fp32 |Δ|."""
    from kd_edge.verify.causal_lm import LMChecker
    from kd_edge.verify.config import VerifyConfig

    texts = [np.asarray(ids[i], np.int64) for i in range(len(ids)) if len(ids[i]) > 1]
    checker, cfg = LMChecker(model, texts), VerifyConfig()
    skip = ("name", "format", "precision", "runtime")

    def check(path: Path, side: dict, logs: Path) -> dict:
        with captured(logs / "verify-tflite.log") if side["runtime"] == "tflite" else contextlib.nullcontext():
            record = checker.measure(path, side, cfg)  # (XNNPACK announces itself from C++)
        return {"n_texts": len(texts), "model_perplexity": checker.student["perplexity"],
                **{k: v for k, v in record.items() if k not in skip}}

    return check, checker.student["pytorch_fp32_max_abs_diff"]


QUANTIZE_PRECISIONS = {".onnx": ("fp16", "int8", "int8-static", "int4"), ".tflite": ("fp16", "int8", "int8-weights")}


def quantize_file(src: Path, precision: str, dst: Path | None, *, texts: Path | None = None,
                  tokenizer: Path | None = None, force: bool = False, fallback_level: int = 0,
                  max_length: int = 128) -> dict:
    """Make ``precision`` of the fp32 file ``src``; check it against ``src`` on sample inputs."""
    from kd_edge.bench.files import runtime_of
    from kd_edge.quantize import QUANTIZERS

    runtime = runtime_of(src)
    if runtime == "torch":
        raise ArtifactError(f"'{src}' is a model folder; quantize an exported .onnx or .tflite file, or use "
                            "`kd-edge export MODEL_DIR --precision ...`")
    allowed = QUANTIZE_PRECISIONS[src.suffix]
    if precision not in allowed:
        raise ConfigError(f"--precision {precision} is not made from {src.suffix} files; choose one of "
                          f"{', '.join(allowed)}")
    dst = dst or src.with_name(f"{src.stem}.{precision}{src.suffix}")
    if dst.resolve() == src.resolve():
        raise ArtifactError(f"--out {dst} is the input file; pick another name")
    if dst.exists() and not force:
        raise ArtifactError(f"'{dst}' already exists; pass --force to replace it or another --out")
    calibration = None
    ids = None
    if texts is not None or tokenizer is not None:
        if texts is None or tokenizer is None:
            raise ConfigError("--calibration and --tokenizer go together: texts to run, and the folder of the "
                              "tokenizer that turns them into token ids")
        ids = tokenize(tokenizer, read_texts(texts), max_length)
        calibration = [{"input_ids": np.asarray(ids[i])[None], "attention_mask": np.ones((1, len(ids[i])), np.int64)}
                       for i in range(len(ids))]
    exclude: list[str] = []
    if fallback_level:
        if src.suffix != ".onnx":
            raise ConfigError("--keep-float is for ONNX files")
        from kd_edge.quantize.onnx_precisions import sensitive_nodes

        exclude = sensitive_nodes(src, fallback_level)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        info = QUANTIZERS.get(f"{src.suffix[1:]}:{precision}")(
            src, tmp, per_channel=True, calibration=calibration, exclude=exclude,
            log_path=dst.with_name(f".{dst.name}.log"), precision=precision)
        # check against the fp32 file: on the calibration texts if given, else on random tokens
        side = {"runtime": runtime, "signatures": _signatures(src) if runtime == "tflite" else None}
        if ids is None:
            rng = np.random.default_rng(0)
            ids = Packed.from_lists([rng.integers(5, _vocab_size(src), n) for n in (12, 24, 32)], dtype=np.int64)
        log = dst.with_name(f".{dst.name}.log")
        ref = _outputs(src, side, ids, 0, log)
        try:
            got = _outputs(tmp, side, ids, 0, log)
        except Exception as e:
            raise QuantizeError(f"the {precision} file does not run in {runtime} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:160]}); try another precision") from e
        cos = np.sum(got * ref, -1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
        shutil.move(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(dst), "precision": precision, "size_mb": dst.stat().st_size / 1e6,
            "source_size_mb": src.stat().st_size / 1e6, "max_abs_diff": float(np.abs(got - ref).max()),
            "min_cosine": float(cos.min()), "n_inputs": len(ids), "nodes_in_float": len(exclude), **info}


def _vocab_size(path: Path) -> int:
    """Token ids below this are valid for the file: the rows of its largest ONNX embedding table."""
    if path.suffix != ".onnx":
        return 100
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {i.name: i.dims[0] for i in graph.initializer if len(i.dims) == 2}
    rows = []
    for node in graph.node:
        # Gather(table, ids); EmbedLayerNormalization(ids, segment_ids, word_table, ...)
        table = node.input[0] if node.op_type == "Gather" else \
            node.input[2] if node.op_type == "EmbedLayerNormalization" else None
        if table in tables:
            rows.append(tables[table])
    return int(max(rows)) if rows else 100


def _signatures(path: Path) -> list[dict]:
    """The (batch, sequence) signatures of a TFLite file, from their names (b1_s128) or input shapes."""
    from kd_edge.device_runner import TfliteBackend

    backend = TfliteBackend(str(path), None)
    sigs = []
    for name in backend.signatures:
        runner = backend.interpreter.get_signature_runner(name)
        shape = next(iter(runner.get_input_details().values()))["shape"]
        sigs.append({"name": name, "batch": int(shape[0]), "seq": int(shape[1])})
    return sigs
