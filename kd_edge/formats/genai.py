"""ONNX Runtime GenAI model folders for causal LMs: ``model.onnx`` (+ ``model.onnx.data``),
``genai_config.json`` and the tokenizer files, written by onnxruntime-genai's own model builder from
the student folder and run by ``onnxruntime_genai.Model(folder)``, so the folder is the one a GenAI
app loads.

The builder makes every precision from the model folder (its fp32 graph uses GroupQueryAttention over a
shared key/value buffer; int4 and int8 are its MatMulNBits weight-only quantization, RTN in blocks of
32, the tied embedding table shared by the lookup and the head). A 4-bit folder past its budget falls
back to the builder's mixed 4/8-bit precision, then to kd-edge's own ONNX KV-cache graph at int4 in a
folder whose config the builder writes (``own_graph``): ONNX Runtime GenAI runs it with a past that
grows each step. A folder is checked against its own
config before it is loaded: a config whose layer count, heads or file names do not match the graph is
one line, not a crash inside the runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kd_edge.errors import ArtifactError, DependencyError, ExportError, QuantizeError
from kd_edge.formats.base import Format, Precision

if TYPE_CHECKING:
    import numpy as np

GENAI_VERSION = "0.18.0"
CONFIG = "genai_config.json"
# the 4-bit fallback: the output head and llama.cpp's "mixed" set of sensitive layers (first and last
# eighth, every third layer's qkv/v/down projections) at 8 bits (the builder's k_quant_mixed)
MIXED = "matmul_mixed_precision=last_matmul:int8,mixed_layers:int8"
# the last 4-bit fallback: kd-edge's own KV-cache graph in a folder whose config the builder writes
OWN_GRAPH = "kd-edge's own ONNX KV-cache graph"


def _genai():
    try:
        import onnxruntime_genai
    except ImportError as e:
        raise DependencyError("the genai format runs in ONNX Runtime GenAI, which is not installed; run: pip install "
                              f"'kd-edge[genai]' (onnxruntime-genai {GENAI_VERSION})") from e
    return onnxruntime_genai


def build(source_dir: Path, jobs: list[tuple[Path, str, tuple[str, ...]]], log_path: Path,
          context_length: int | None = None) -> None:
    """onnxruntime-genai's model builder on the model folder ``source_dir`` for the CPU, once per job
    (output folder, precision: fp32 / int8 / int4, builder options), all in one process (importing the
    builder is most of a small model's build). ``context_length``: the positions the folder is built for
    (the builder sizes its rotary tables by the model's max_position_embeddings; it then reads a view of
    the folder whose config says this many)."""
    from kd_edge.export.capture import tail

    _genai()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if context_length:
        source_dir = _with_positions(source_dir, context_length, jobs[0][0].parent / "_source.view")
    spec = json.dumps([[str(out), precision, list(options)] for out, precision, options in jobs])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_path, "ab") as log:
        rc = subprocess.run([sys.executable, "-m", "kd_edge.formats.genai", str(source_dir), spec], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=jobs[0][0].parent).returncode
    for out, precision, _ in jobs:
        if rc != 0 or not (out / CONFIG).is_file():
            error = ExportError if precision == "fp32" else QuantizeError
            raise error(f"onnxruntime-genai's model builder failed on {source_dir.name} at {precision} (exit {rc}): "
                        f"{tail(log_path, 1)[:300]}; see {log_path}, or export to onnx")


def _with_positions(source_dir: Path, positions: int, view: Path) -> Path:
    """A folder of links to ``source_dir``'s files whose config.json holds ``positions`` positions."""
    config = json.loads((source_dir / "config.json").read_text())
    if positions > config.get("max_position_embeddings", positions):
        raise ExportError(f"export.context_length ({positions}) is longer than the model's "
                          f"{config['max_position_embeddings']} positions; lower it")
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for f in source_dir.iterdir():
        if f.is_file() and f.name != "config.json":
            (view / f.name).symlink_to(f.resolve())
    (view / "config.json").write_text(json.dumps({**config, "max_position_embeddings": positions}, indent=2))
    return view


def describe(folder: Path, precision: str, options: tuple[str, ...] = (), own: bool = False) -> dict:
    """What a built folder's sidecar records (``own``: the graph is kd-edge's, the config the builder's)."""
    cfg = read_config(folder)
    builder = f"onnxruntime-genai {GENAI_VERSION} model builder -p {precision} -e cpu"
    return {"inputs": [{"name": n, "dtype": "int64"} for n in ("input_ids", "attention_mask")], "outputs": ["logits"],
            "genai_model_type": cfg["model"].get("type"), "context_length": cfg["model"].get("context_length"),
            "files": sorted(p.name for p in folder.iterdir()),
            "graph": cfg["model"]["decoder"].get("filename", "model.onnx"),
            "stored_as": f"{OWN_GRAPH} {precision} in a GenAI folder" if own else
                         f"onnxruntime-genai {precision}" + (" (mixed int4/int8)" if MIXED in options else ""),
            "builder": f"kd-edge's ONNX export; {builder} for genai_config.json and the tokenizer (config_only)" if own
                       else builder + (f", options {' '.join(options)}" if options else "")}


OPTIONS = {"fp32": (), "int8": ("block_size=64",), "int4": ()}  # the builder options of each precision


def _prebuilt(base: Path, precision: str) -> Path:
    return base.parent / f"_prebuilt.{precision}{FORMAT.suffix}"


class GenaiExporter:
    """The model builder on the student folder: fp32 into ``out``, and in the same process every other
    precision the recipe asks for, beside it, for their ``make`` to take."""

    def export(self, module, out: Path, *, source_dir: Path, log_path: Path, precisions: tuple[str, ...] = (),
               context_length: int | None = None, **_: object) -> dict:
        others = [p for p in dict.fromkeys(precisions) if p != "fp32" and p in OPTIONS]
        build(source_dir, [(out, "fp32", ()), *((_prebuilt(out, p), p, OPTIONS[p]) for p in others)], log_path,
              context_length)
        return describe(out, "fp32")


def _make(src: Path, dst: Path, precision: str, source_dir: Path, log_path: Path, options: tuple[str, ...] | None,
          context_length: int | None = None):
    """The folder at ``precision``: the one the exporter built beside ``src``, or built now."""
    prebuilt = _prebuilt(src, precision)
    if options is None and prebuilt.is_dir():
        prebuilt.rename(dst)
        return describe(dst, precision, OPTIONS[precision])
    options = OPTIONS[precision] if options is None else options
    build(source_dir, [(dst, precision, options)], log_path, context_length)
    return describe(dst, precision, options)


def build_int8(src: Path, dst: Path, *, source_dir: Path, log_path: Path, context_length: int | None = None,
               **_: object) -> dict:
    """The builder's int8 in blocks of 64 (an fp32 scale per 64 weights: 1.06 bytes per weight; blocks
    of 32 would be 1.125), and a tied embedding table shared with the head (the builder keeps the
    lookup's table in fp32 at 8 bits, which alone is 4 bytes per vocabulary weight)."""
    info = _make(src, dst, "int8", source_dir, log_path, None, context_length)
    shared = share_tied_table(dst)
    return {**info, "quantization": {"method": "onnxruntime-genai builder int8 (MatMulNBits, RTN, blocks of 64)",
                                     "tied_table": "int8, shared by the lookup and the head" if shared else None}}


def build_int4(src: Path, dst: Path, *, source_dir: Path, log_path: Path, options: tuple[str, ...] | None = None,
               context_length: int | None = None, **_: object) -> dict:
    return {**_make(src, dst, "int4", source_dir, log_path, options, context_length),
            "quantization": {"method": "onnxruntime-genai builder int4 (MatMulNBits, RTN, blocks of 32)"}}


def own_graph(source_dir: Path, dst: Path, *, precision: str, log_path: Path, context_length: int | None = None,
              opset: int = 17) -> dict:
    """A GenAI folder around kd-edge's own ONNX export of the model (the KV-cache step the onnx format
    writes: input_ids, attention_mask, position_ids and a past key/value per layer in; logits and the
    presents out), where the builder writes only the config and tokenizer files (``config_only``: a
    past that grows each step instead of GroupQueryAttention's shared buffer). At int4 the graph is
    the onnx format's int4 (MatMulNBits blocks of 16 with zero points; a tied table int8, shared by
    the lookup and the head): the fallback for a model whose builder folders lose too much."""
    import onnx

    from kd_edge.export.onnx import OnnxExporter
    from kd_edge.export.onnx_files import save
    from kd_edge.quantize.onnx_precisions import quantize_onnx_int4
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.kinds import ModelSource

    build(source_dir, [(dst, precision, ("config_only=true",))], log_path, context_length)
    scratch = dst.parent / f"_{dst.name}.graph"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        task = TASKS.get("causal_lm")()
        module = task.export_module(task.load_model(ModelSource(source_dir), eager=True), {})
        graph = scratch / "step.onnx"
        OnnxExporter().export(module, graph, input_names=task.input_names, output_name=task.output_name, opset=opset)
        quantization = None
        if precision == "int4":
            quantization = quantize_onnx_int4(graph, scratch / "step.int4.onnx")["quantization"]
            graph = scratch / "step.int4.onnx"
        elif precision != "fp32":
            raise QuantizeError(f"kd-edge's own GenAI graph is made at fp32 or int4, not {precision}")
        # model.onnx.data, as the builder writes; small tensors (shapes) stay in the graph, where GenAI's
        # shape inference reads them
        save(onnx.load(str(graph)), dst / "model.onnx", external=True, inline_below=1024)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    path = dst / CONFIG
    cfg = json.loads(path.read_text())
    dec = cfg["model"]["decoder"]
    dec["filename"] = "model.onnx"
    dec["inputs"] = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                     "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    dec["outputs"] = {"logits": "logits", "present_key_names": "present.%d.key",
                      "present_value_names": "present.%d.value"}
    cfg["search"]["past_present_share_buffer"] = False
    path.write_text(json.dumps(cfg, indent=4))
    info = describe(dst, precision, own=True)
    return {**info, "quantization": quantization} if quantization else info


def int4_fallback(src: Path, path: Path, precision: str, quantize, kw: dict, measure, budget: float,
                  tried: list) -> dict:
    """The 4-bit fallback, lightest first: (1) the builder again with the output head and the most
    sensitive layers' projections at 8 bits; (2) kd-edge's own ONNX graph at int4 (blocks of 16 with
    zero points, a tied table at 8 bits: the builder cannot write a tied 8-bit head, and SmolLM2's
    students are tied). The first within the budget is kept; if none is, the one that lost least,
    the plain folder included. An attempt that fails (the builder's, or ONNX Runtime GenAI refusing
    the folder) is recorded with why and the next one is tried."""
    attempts = [
        ("builder mixed: " + MIXED, "the output head and the sensitive layers' projections at 8 bits (the builder's "
         "mixed precision)", lambda: quantize(src, path, **{**kw, "options": (MIXED,)})),
        (OWN_GRAPH, "kd-edge's own ONNX graph: 4-bit weights in blocks of 16 with zero points, the tied table and head "
         "at 8 bits", lambda: own_graph(kw["source_dir"], path, precision=precision, log_path=kw["log_path"],
                                        context_length=kw.get("context_length"))),
    ]
    aside = path.with_name(path.name + ".plain")
    path.replace(aside)
    best: tuple[float, Path, dict, int, str] | None = None  # drop, folder, sidecar entries, level, what it keeps
    errors = []
    for level, (label, keeps, make) in enumerate(attempts, 1):
        try:
            extra = make()
            drop = measure()
        except (ExportError, QuantizeError) as e:
            shutil.rmtree(path, ignore_errors=True)
            tried.append({"attempt": label, "error": str(e)})
            errors.append(f"{label}: {e}")
            continue
        tried.append({"attempt": label, "drop": round(drop, 5)})
        if best is None or drop < best[0]:
            if best is not None:
                shutil.rmtree(best[1])
            best = (drop, path.with_name(f"{path.name}.level{level}"), extra, level, keeps)
            path.replace(best[1])
        else:
            shutil.rmtree(path)
        if drop <= budget:
            break
    plain_drop = tried[0]["drop"] if tried and "drop" in tried[0] else float("inf")
    if best is None or best[0] >= plain_drop:
        if best is not None:
            shutil.rmtree(best[1])
        aside.replace(path)
        why = "; ".join(errors) if errors else f"none lost less than the plain folder ({plain_drop * 100:.2f} %)"
        return {"fallback": {"engaged": False, "reason": f"the lighter 4-bit recipes did not help ({why[:600]}); the "
                                                         "plain int4 folder is kept"}}
    shutil.rmtree(aside)
    drop, folder, extra, level, keeps = best
    folder.replace(path)
    return {**extra, "fallback": {"engaged": True, "level": level, "kept_in_float": keeps, "nodes": [],
                                  "within_budget": drop <= budget}}


def share_tied_table(folder: Path) -> bool:
    """Replace the fp32 lookup of a tied embedding table by a GatherBlockQuantized over the head's
    int8 blocks (the builder does this at 4 bits, not at 8). Only when the folder's graph looks up
    ``model.embed_tokens.weight`` and its head is 8-bit MatMulNBits; returns whether it did."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    path = folder / "model.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits"), None)
    lookup = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] == "model.embed_tokens.weight"), None)
    if head is None or lookup is None or {a.name: a.i for a in head.attribute}.get("bits") != 8:
        return False
    table = numpy_helper.to_array(inits["model.embed_tokens.weight"])
    weights, scales = inits[head.input[1]], inits[head.input[2]]
    vocab, blocks, block = weights.dims
    if (vocab, blocks * block) != table.shape:  # not the same matrix: leave the graph alone
        return False
    shape = numpy_helper.from_array(np.array([vocab, blocks * block], np.int64), "/model/embed_tokens/q8_shape")
    reshape = helper.make_node("Reshape", [weights.name, shape.name], ["/model/embed_tokens/q8_table"],
                               name="/model/embed_tokens/Reshape")
    gather = helper.make_node("GatherBlockQuantized", ["/model/embed_tokens/q8_table", lookup.input[1], scales.name],
                              list(lookup.output), name="/model/embed_tokens/GatherBlockQuantized",
                              domain="com.microsoft", bits=8, block_size=block, gather_axis=0, quantize_axis=1)
    at = list(graph.node).index(lookup)
    graph.node.remove(lookup)
    graph.node.insert(at, gather)
    graph.node.insert(at, reshape)
    graph.initializer.remove(inits["model.embed_tokens.weight"])
    graph.initializer.append(shape)
    data = folder / "model.onnx.data"
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name)
    return True


def read_config(folder: Path) -> dict:
    """A folder's genai_config.json, or a one-line ArtifactError."""
    path = folder / CONFIG
    if not path.is_file():
        raise ArtifactError(f"'{folder}' is not an ONNX Runtime GenAI folder (no {CONFIG}); export it again")
    try:
        cfg = json.loads(path.read_text())
        cfg["model"]["decoder"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"'{path}' is not a GenAI config ({type(e).__name__}: {e}); export the folder again") from e
    return cfg


def check_folder(folder: Path) -> None:
    """Refuse a GenAI folder whose config does not match its graph: the graph file it names, the
    inputs and outputs it names, the layer count (one past key/value pair per layer) and the key/value
    heads and head size of the past inputs. One line, naming the field and both values."""
    import onnx

    cfg = read_config(folder)
    dec = cfg["model"]["decoder"]
    graph_path = folder / dec.get("filename", "model.onnx")
    if not graph_path.is_file():
        raise ArtifactError(f"'{folder.name}': {CONFIG} names the graph {graph_path.name}, which is not in the folder; "
                            "export the folder again")
    try:
        graph = onnx.load(str(graph_path), load_external_data=False).graph
    except Exception as e:  # protobuf's DecodeError: not an ONNX graph
        raise ArtifactError(f"'{folder.name}': {graph_path.name} is not a readable ONNX graph ({type(e).__name__}); "
                            "export the folder again") from e
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name for o in graph.output}
    names = dec.get("inputs", {})
    past = names.get("past_key_names", "past_key_values.%d.key")
    layers = sum(1 for n in inputs if _matches(past, n))

    def mismatch(field: str, config_value, graph_value) -> ArtifactError:
        return ArtifactError(f"'{folder.name}': {CONFIG} does not match {graph_path.name}: {field} is {config_value} in "
                             f"the config but {graph_value} in the graph; export the folder again (or fix {CONFIG})")

    for role in ("input_ids", "attention_mask"):
        if names.get(role, role) not in inputs:
            raise mismatch(f"decoder.inputs.{role}", repr(names.get(role, role)), "not an input")
    logits = dec.get("outputs", {}).get("logits", "logits")
    if logits not in outputs:
        raise mismatch("decoder.outputs.logits", repr(logits), "not an output")
    if dec.get("num_hidden_layers") != layers:
        raise mismatch("decoder.num_hidden_layers", dec.get("num_hidden_layers"), f"{layers} (past key inputs)")
    if layers:
        dims = [d.dim_value or d.dim_param for d in inputs[past % 0].type.tensor_type.shape.dim]
        if len(dims) == 4:
            for field, at in (("num_key_value_heads", 1), ("head_size", 3)):
                if isinstance(dims[at], int) and dims[at] and dec.get(field) != dims[at]:
                    raise mismatch(f"decoder.{field}", dec.get(field), dims[at])
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise ArtifactError(f"'{folder.name}' has no tokenizer (tokenizer.json); export the folder again")


def _matches(pattern: str, name: str) -> bool:
    head, _, tail = pattern.partition("%d")
    middle = name[len(head):len(name) - len(tail)] if name.startswith(head) and name.endswith(tail) else ""
    return middle.isdigit()


class GenaiDecoder:
    """A GenAI folder driven by ONNX Runtime GenAI's own generator: a text appended as one prompt (the
    logits of every position), one token at a time over the generator's key/value buffer, and greedy
    search by the generator itself (``do_sample`` off; ``min_length`` holds it to exactly ``n`` new
    tokens, past an end-of-text token, as PyTorch's reference does)."""

    def __init__(self, path: Path, info: dict, threads: int | None = None):
        og = _genai()
        check_folder(path)
        config = og.Config(str(path))
        config.clear_providers()  # the CPU
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                                  "inter_op_num_threads": 1}}}}))
        try:
            model = og.Model(config)
        except RuntimeError as e:  # a folder the builder wrote that its runtime refuses
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"{path.name} does not load in ONNX Runtime GenAI: {first[:300]}") from e
        self.og, self.model = og, model
        self.size = int(read_config(path)["model"].get("context_length") or 2048)
        self.record = {"genai_version": og.__version__}

    def _generator(self, length: int, min_length: int = 0):
        if length > self.size:
            raise ExportError(f"a text has {length} tokens, more than the GenAI folder's context_length {self.size}; "
                              "shorten data.max_length")
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=length, min_length=min_length, batch_size=1)
        return self.og.Generator(self.model, params)

    @staticmethod
    def _ids(ids) -> "np.ndarray":
        import numpy as np

        return np.asarray(ids, np.int32)

    def logits_of(self, ids: "np.ndarray") -> "np.ndarray":
        import numpy as np

        gen = self._generator(len(ids) + 1)
        gen.append_tokens(self._ids(ids))
        return np.array(gen.get_output("logits")[0, :len(ids)], np.float32)

    def decode_logits(self, ids: "np.ndarray", start: int) -> "np.ndarray":
        import numpy as np

        gen = self._generator(len(ids) + 1)
        gen.append_tokens(self._ids(ids[:start]))
        rows = []
        for pos in range(start, len(ids)):
            gen.append_tokens(self._ids(ids[pos:pos + 1]))
            rows.append(np.array(gen.get_output("logits")[0, -1], np.float32))
        return np.stack(rows)

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        total = len(prompt) + n
        gen = self._generator(total, min_length=total)
        gen.append_tokens(self._ids(prompt))
        tokens: list[int] = []
        while len(tokens) < n and not gen.is_done():
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
        return tokens


class GenaiFormat(Format):
    """A folder, not a file: copied, sized and removed as one."""

    is_folder = True

    def size(self, path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    def weights_size(self, path: Path) -> int:
        graph = path / read_config(path)["model"]["decoder"].get("filename", "model.onnx")
        return sum(p.stat().st_size for p in (graph, graph.with_name(graph.name + ".data")) if p.is_file())

    def copy(self, src: Path, dst: Path) -> None:
        shutil.copytree(src, dst)

    def remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def check_file(self, path: Path) -> None:
        if not path.is_dir():
            raise ArtifactError(f"'{path}' is not an ONNX Runtime GenAI folder (a .genai file, not a folder); export it "
                                "again")
        check_folder(path)


FORMAT = GenaiFormat(
    name="genai", suffix=".genai", runtime="onnxruntime-genai",
    summary="ONNX Runtime GenAI model folders for causal LMs (model.onnx, genai_config.json, tokenizer) by "
            "onnxruntime-genai's model builder, run by onnxruntime_genai.Model(folder).",
    exporter="kd_edge.formats.genai:GenaiExporter", requires=("onnxruntime_genai", "onnx"), extra="genai",
    precisions=(
        Precision("fp32", "the builder's fp32 graph (GroupQueryAttention, a shared key/value buffer)", 32),
        Precision("int8", "the builder's int8: MatMulNBits 8-bit weights in blocks of 64, the tied table shared", 8,
                  "kd_edge.formats.genai:build_int8", ("onnxruntime_genai",), "genai"),
        Precision("int4", "the builder's int4: MatMulNBits 4-bit weights in blocks of 32, int8 compute "
                  "(fallback: the head and sensitive layers at 8 bits)", 4, "kd_edge.formats.genai:build_int4",
                  ("onnxruntime_genai",), "genai", fallback="kd_edge.formats.genai:int4_fallback"),
    ),
    lm_decoder="kd_edge.formats.genai:GenaiDecoder",
    device_modules=("onnxruntime_genai",), device_package=f"onnxruntime-genai=={GENAI_VERSION}",
    needs_source_folder=True,
)


def _main(argv: list[str]) -> None:
    """``python -m kd_edge.formats.genai SOURCE JOBS``: the builder on SOURCE for each job of the JSON
    list JOBS ([output folder, precision, [KEY=VALUE options]]), one import of the builder for all."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    source = argv[0]
    for out, precision, options in json.loads(argv[1]):
        cache = str(Path(out).parent / f"_{Path(out).name}.cache")
        extra = parse_extra_options(None, source, out, precision, "cpu", cache, options or None)
        create_model(None, source, out, precision, "cpu", cache, **extra)
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
