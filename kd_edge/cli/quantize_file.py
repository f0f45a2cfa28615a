"""What `kd-edge quantize FILE` does: make one precision of an exported .onnx / .tflite file and check
every floating-point output of it against that file, on real text or sample token ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kd_edge.artifacts import atomic_file
from kd_edge.cli.export_folder import read_texts, tokenize
from kd_edge.data.packed import Packed
from kd_edge.errors import ArtifactError, ConfigError, QuantizeError
from kd_edge.export.capture import captured



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

    from kd_edge.formats import format_of

    runtime = runtime_of(src)
    if runtime == "torch":
        raise ArtifactError(f"'{src}' is a model folder; quantize an exported .onnx or .tflite file, or use "
                            "`kd-edge export MODEL_DIR --precision ...`")
    fmt = format_of(src)
    if not fmt.file_quantize:
        raise ConfigError(f"kd-edge quantize compares the outputs of .onnx and .tflite files; a {fmt.name} file's "
                          f"precisions are made by export: kd-edge export MODEL_DIR --format {fmt.name} --precision "
                          f"{','.join(p.name for p in fmt.precisions if p.make)}")
    proto = _readable_model(src)  # an ONNX file is parsed once, here (weights left on disk)
    allowed = tuple(p.name for p in fmt.precisions if p.make)
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
        info = QUANTIZERS.get(f"{fmt.name}:{precision}")(
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
    from kd_edge.formats import format_of

    format_of(path).check_file(path)  # its identifier
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
