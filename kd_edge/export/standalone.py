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
from pathlib import Path

import numpy as np

from kd_edge.artifacts import atomic_dir, atomic_file, write_json
from kd_edge.data.packed import Packed
from kd_edge.errors import ArtifactError, ConfigError, QuantizeError
from kd_edge.export.capture import captured
from kd_edge.verify.config import VerifyConfig
from kd_edge.verify.reference import REFERENCE, Parity, exact_outputs, fp32_reason, outputs

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


def _outputs(path: Path, info: dict, ids: Packed, pad_id: int, log: Path) -> np.ndarray:
    from kd_edge.verify.run import run_onnx, run_tflite

    if info["runtime"] == "onnxruntime":
        return run_onnx(path, ids, pad_id, None)
    return run_tflite(path, ids, pad_id, None, info["signatures"], log)


def compare(task: str, got: np.ndarray, ref: np.ndarray, precision: str, parity: Parity,
            pytorch_fp32: float | None = None) -> dict:
    """|Δ|, agreement and the verdict of an artifact's outputs against the reference outputs (the
    model in float64, whose fp32 PyTorch run is ``pytorch_fp32`` from it); ``parity`` may already
    hold other comparisons of the file (its other TFLite signatures)."""
    diff = np.abs(got - ref)
    parity.add(got, ref)
    if task == "sequence_classification":
        agreement = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
        what = "same class as the model"
    else:
        cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        agreement = float(np.mean(cos > 0.99))
        what = "embeddings with cosine > 0.99 to the model's"
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
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.kinds import ModelSource
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
    model = adapter.load_model(ModelSource(model_dir, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
                               eager=True).eval()
    module = adapter.export_module(model, meta)
    ids = tokenize(model_dir, read_texts(texts), max_length)
    calibration = lambda: [{"input_ids": np.asarray(ids[i])[None], "attention_mask": np.ones((1, len(ids[i])), np.int64)}  # noqa: E731
                           for i in range(min(len(ids), cfg.calibration_size))]
    common = {"task": task, "params": sum(p.numel() for p in model.parameters()), "source": str(model_dir),
              **({"pooling": meta["pooling"], "normalize": meta["normalize"]} if task == "sentence_embedding" else {})}
    tolerance = VerifyConfig()  # the verify stage's defaults: fp32 within 1e-4 + 1e-5·|model|
    check, pytorch_fp32 = (_lm_checker(model, ids, tolerance) if task == "causal_lm"
                           else _encoder_checker(task, module, ids, config, adapter.output_name, tolerance))
    records = []
    with atomic_dir(out) as tmp:
        sidecars = make_artifacts(module, config, cfg, tmp, input_names=adapter.input_names,
                                  output_name=adapter.output_name, common=common, logs=tmp / "logs",
                                  fp32_tolerance=tolerance.fp32_atol, calibration=calibration)
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


def _encoder_checker(task: str, module, ids: Packed, config: dict, output_name: str, tolerance):
    """A function (file, sidecar, logs) -> record for an encoder (outputs on every text against the
    model in float64, every TFLite signature too; agreement; verdict), and PyTorch's own fp32 |Δ|."""
    from kd_edge.verify.run import signature_diffs

    pad_id = config.get("pad_token_id") or 0
    fp32, ref = outputs(module, ids), exact_outputs(module, ids)
    pytorch_fp32 = float(np.abs(fp32 - ref).max())

    def check(path: Path, side: dict, logs: Path) -> dict:
        got = _outputs(path, side, ids, pad_id, logs / "verify-tflite.log")
        sig, parity = {}, Parity(tolerance.fp32_atol, tolerance.fp32_rtol)
        if side["runtime"] == "tflite" and len(side["signatures"]) > 1:  # every signature, batched ones too
            sig = signature_diffs(path, ids, pad_id, None, side["signatures"], ref, logs / "verify-tflite.log",
                                  parity=parity)
        record = {"n_texts": len(ids), "outputs_compared": [output_name],
                  **compare(task, got, ref, side["precision"], parity, pytorch_fp32=pytorch_fp32)}
        return {**record, "signature_max_abs_diff": sig} if sig else record

    return check, pytorch_fp32


def _lm_checker(model, ids: Packed, cfg):
    """A function (file, sidecar, logs) -> record for a causal LM (the verify stage's checks: logits
    |Δ| as a prompt and token by token, perplexity, greedy generation; verdict by its defaults), and
    PyTorch's own fp32 |Δ|."""
    from kd_edge.verify.causal_lm import LMChecker

    texts = [np.asarray(ids[i], np.int64) for i in range(len(ids)) if len(ids[i]) > 1]
    checker = LMChecker(model, texts)
    skip = ("name", "format", "precision", "runtime")

    def check(path: Path, side: dict, logs: Path) -> dict:
        with captured(logs / "verify-tflite.log") if side["runtime"] == "tflite" else contextlib.nullcontext():
            record = checker.measure(path, side, cfg)  # (XNNPACK announces itself from C++)
        return {"n_texts": len(texts), "outputs_compared": ["logits"], "model_perplexity": checker.student["perplexity"],
                **{k: v for k, v in record.items() if k not in skip}}

    return check, checker.student["pytorch_fp32_max_abs_diff"]


QUANTIZE_PRECISIONS = {".onnx": ("fp16", "int8", "int8-static", "int4"), ".tflite": ("fp16", "int8", "int8-weights")}


def named_outputs(path: Path, runtime: str, ids: Packed, log: Path) -> dict[str, list[np.ndarray]]:
    """Every output of a file, by name, on each text run alone (batch 1, unpadded for ONNX; TFLite
    pads it to the shortest signature that holds it): shapes may differ between outputs and texts."""
    from kd_edge.device_runner import OrtBackend, RunnerError, TfliteBackend

    feeds = [{"input_ids": np.asarray(ids[i], np.int64)[None],
              "attention_mask": np.ones((1, len(ids[i])), np.int64)} for i in range(len(ids))]
    out: dict[str, list[np.ndarray]] = {}
    try:
        if runtime == "onnxruntime":
            backend = OrtBackend(str(path), None)
            names = [o.name for o in backend.session.get_outputs()]
            runs = (backend.run(f) for f in feeds)
        else:
            backend = TfliteBackend(str(path), None)
            sig = lambda f: backend.signature_for(1, f["input_ids"].shape[1])  # noqa: E731
            names = None
            runs = []
            with captured(log):
                for f in feeds:
                    name = sig(f)
                    runs.append(backend.run(f, signature=name))
                    names = names or sorted(backend.interpreter.get_signature_runner(name).get_output_details())
        for values in runs:
            for name, value in zip(names, values):
                out.setdefault(name, []).append(np.asarray(value))
    except RunnerError as e:
        raise ArtifactError(f"{path.name}: {e}") from e
    except Exception as e:
        raise ArtifactError(f"{runtime} cannot run {path} ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                            "check that it is a complete exported model (export it again)") from e
    return out


def compare_outputs(ref: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]],
                    only: str | None = None) -> tuple[list[dict], list[str]]:
    """|Δ| and cosine of every floating-point output (or only the one named ``only``) of ``got``
    against ``ref``; integer outputs (a copy of the token ids, a mask) cannot tell two precisions
    apart and are left out: returns (compared, left out as 'name (dtype)')."""
    if only is not None and only not in ref:
        raise ConfigError(f"--output {only!r} is not an output of the file; its outputs are {', '.join(ref)}")
    compared, skipped = [], []
    for name, values in ref.items():
        if only is not None and name != only:
            continue
        if not np.issubdtype(values[0].dtype, np.floating):
            skipped.append(f"{name} ({values[0].dtype})")
            continue
        if name not in got:
            raise QuantizeError(f"the quantized file has no output {name!r}; try another precision")
        diffs, cosines = [], []
        for a, b in zip(values, got[name]):
            a64, b64 = a.astype(np.float64).ravel(), np.asarray(b, np.float64).ravel()
            if a64.shape != b64.shape:
                raise QuantizeError(f"output {name!r} changed shape ({a.shape} -> {np.shape(b)}); try another precision")
            diffs.append(float(np.abs(a64 - b64).max()) if a64.size else 0.0)
            cosines.append(float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-12)))
        compared.append({"name": name, "max_abs_diff": max(diffs), "min_cosine": min(cosines),
                         "shape": list(values[0].shape)})
    if not compared:
        raise ConfigError(f"the file has no floating-point output to compare ({', '.join(skipped)}); "
                          "name one with --output")
    return compared, skipped


def quantize_file(src: Path, precision: str, dst: Path | None, *, texts: Path | None = None,
                  tokenizer: Path | None = None, force: bool = False, fallback_level: int = 0,
                  max_length: int = 128, output: str | None = None) -> dict:
    """Make ``precision`` of the fp32 file ``src``; check every floating-point output of it against
    ``src`` (or the one named ``output``) on sample inputs."""
    from kd_edge.bench.files import runtime_of
    from kd_edge.quantize import QUANTIZERS

    runtime = runtime_of(src)
    if runtime == "torch":
        raise ArtifactError(f"'{src}' is a model folder; quantize an exported .onnx or .tflite file, or use "
                            "`kd-edge export MODEL_DIR --precision ...`")
    proto = _readable_model(src)  # an ONNX file is parsed once, here (weights left on disk)
    allowed = QUANTIZE_PRECISIONS[src.suffix]
    if precision not in allowed:
        raise ConfigError(f"--precision {precision} is not made from {src.suffix} files; choose one of "
                          f"{', '.join(allowed)}")
    dst = dst or src.with_name(f"{src.stem}.{precision}{src.suffix}")
    if dst.suffix != src.suffix:
        raise ConfigError(f"--out {dst} does not end in {src.suffix}; name it like the input, e.g. "
                          f"{dst.with_suffix(src.suffix).name}")
    if dst.resolve() == src.resolve():
        raise ArtifactError(f"--out {dst} is the input file; pick another name")
    from kd_edge.paths import output_file

    output_file(dst, "--out", force=force, parents=False, example=f"{src.stem}.{precision}{src.suffix}",
                overwrite_hint="pass --force to replace it or another --out")
    if fallback_level and src.suffix != ".onnx":
        raise ConfigError("--keep-float is for ONNX files; a TFLite file's lighter int8 is --precision int8-weights")
    if fallback_level and precision in ("fp16", "int4"):
        raise ConfigError(f"--keep-float chooses nodes int8 leaves in float; --precision {precision} is not int8")
    if (texts is None) != (tokenizer is None):
        raise ConfigError("--calibration needs --tokenizer and the other way round; pass both: the texts, and the "
                          "folder of the tokenizer that turns them into token ids")
    if texts is None and precision == "int8-static":
        raise ConfigError("--precision int8-static calibrates activation ranges on real text; pass "
                          "--calibration TEXTS.jsonl --tokenizer MODEL_DIR, or use --precision int8 (dynamic)")
    if texts is not None:
        ids = tokenize(tokenizer, read_texts(texts), max_length)
    else:
        rng = np.random.default_rng(0)
        ids = Packed.from_lists([rng.integers(5, _vocab_size(src, proto), n) for n in (12, 24, 32)], dtype=np.int64)
    log = dst.with_name(f".{dst.name}.log")
    ref = named_outputs(src, runtime, ids, log)  # the input runs, before anything is written
    if output is not None:
        compare_outputs(ref, ref, only=output)  # an unknown --output is refused before quantizing
    calibration = [{"input_ids": np.asarray(ids[i])[None], "attention_mask": np.ones((1, len(ids[i])), np.int64)}
                   for i in range(len(ids))] if precision == "int8-static" else None
    if calibration and proto is not None:
        calibration = _with_graph_inputs(proto, calibration)
    exclude: list[str] = []
    if fallback_level:
        from kd_edge.quantize.onnx_precisions import sensitive_nodes

        exclude = sensitive_nodes(src, fallback_level)
    with atomic_file(dst) as tmp:  # in place only once it runs and compares
        info = QUANTIZERS.get(f"{src.suffix[1:]}:{precision}")(
            src, tmp, per_channel=True, calibration=calibration, exclude=exclude, log_path=log)
        try:
            got = named_outputs(tmp, runtime, ids, log)
        except ArtifactError as e:
            raise QuantizeError(f"the {precision} file does not run in {runtime} ({e}); try another precision") from e
        compared, skipped = compare_outputs(ref, got, only=output)
    return {"file": str(dst), "precision": precision, "size_mb": dst.stat().st_size / 1e6,
            "source_size_mb": src.stat().st_size / 1e6, "outputs": compared, "outputs_left_out": skipped,
            "max_abs_diff": max(c["max_abs_diff"] for c in compared),
            "min_cosine": min(c["min_cosine"] for c in compared), "n_inputs": len(ids),
            "nodes_in_float": len(exclude), **info}


def _readable_model(path: Path):
    """An .onnx file parses as an ONNX model (returned, its weights not loaded), a .tflite file
    carries the TFLite identifier (None): a truncated or foreign file is refused before anything runs."""
    if path.suffix == ".onnx":
        import onnx

        try:
            return onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError, an unreadable file
            raise ArtifactError(f"'{path}' is not a complete ONNX model ({type(e).__name__}); the file may be truncated: "
                                "export it again") from None
    elif path.suffix == ".tflite":
        with open(path, "rb") as f:
            head = f.read(8)
        if head[4:8] != b"TFL3":
            raise ArtifactError(f"'{path}' is not a TFLite model (no TFL3 identifier); the file may be truncated or "
                                "renamed: export it again")
    return None


def _with_graph_inputs(proto, feeds: list[dict]) -> list[dict]:
    """Calibration feeds with every other input the graph takes (segment ids: zeros)."""
    names = [i.name for i in proto.graph.input]
    out = []
    for f in feeds:
        f = dict(f)
        if "token_type_ids" in names:
            f["token_type_ids"] = np.zeros_like(f["input_ids"])
        out.append({k: v for k, v in f.items() if k in names})
    return out


def _vocab_size(path: Path, proto=None) -> int:
    """Token ids below this are valid for the file: the rows of its largest embedding table (ONNX:
    Gather / EmbedLayerNormalization inputs of ``proto``, the parsed file; TFLite: EMBEDDING_LOOKUP /
    GATHER tables)."""
    if path.suffix == ".tflite":
        return _tflite_vocab_size(path)
    if proto is None:
        return 100
    graph = proto.graph
    tables = {i.name: i.dims[0] for i in graph.initializer if len(i.dims) == 2}
    rows = []
    for node in graph.node:
        # Gather(table, ids); EmbedLayerNormalization(ids, segment_ids, word_table, ...)
        table = node.input[0] if node.op_type == "Gather" else \
            node.input[2] if node.op_type == "EmbedLayerNormalization" else None
        if table in tables:
            rows.append(tables[table])
    return int(max(rows)) if rows else 100


def _tflite_vocab_size(path: Path) -> int:
    from kd_edge.device_runner import TfliteBackend

    try:
        interpreter = TfliteBackend(str(path), None).interpreter
        shapes = {d["index"]: tuple(int(x) for x in d["shape"]) for d in interpreter.get_tensor_details()}
        rows = []
        for op in interpreter._get_ops_details():  # LiteRT's op list (no public equivalent)
            if op["op_name"] in ("EMBEDDING_LOOKUP", "GATHER"):
                rows += [shapes[i][0] for i in op["inputs"] if len(shapes.get(i, ())) == 2]
        return max(rows) if rows else 30
    except Exception:  # an estimate: ids below 30 exist in every vocabulary kd-edge meets
        return 30
