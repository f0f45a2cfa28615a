"""ONNX export with dynamic batch and sequence axes."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch

from kd_edge.errors import ExportError
from kd_edge.export import onnx_files


class OnnxExporter:
    """torch.onnx export of a module taking (input_ids, attention_mask)."""

    def export(self, module: torch.nn.Module, out: Path, *, input_names: tuple[str, ...], output_name: str,
               opset: int, **_: object) -> dict:
        """Write ``out``; return what the artifact's sidecar records about its inputs."""
        io = module.onnx_io() if hasattr(module, "onnx_io") else None  # causal LMs: a KV-cache step
        if io is None:
            args = tuple(torch.ones(2, 16, dtype=torch.int64) for _ in input_names)
            names_in, names_out = list(input_names), [output_name]
            dynamic = {n: {0: "batch", 1: "sequence"} for n in input_names}
        else:
            args, names_in, names_out, dynamic = io["args"], io["input_names"], io["output_names"], io["dynamic_axes"]
        weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        external = onnx_files.needs_external(weight_bytes)
        # Over the limit, torch writes one file per tensor beside the graph: let it do so in a folder of
        # its own, then gather them into <name>.data.
        target = out.parent / f"_scratch-{out.name}" / out.name if external else out
        target.parent.mkdir(exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The TorchScript-based exporter (dynamo=False) takes ~1 s here against 4-10 s for
                # dynamo, and its graph of eager attention is the one ONNX Runtime's fusions match.
                torch.onnx.export(module, args, str(target), input_names=names_in,
                                  output_names=names_out, dynamic_axes=dynamic, opset_version=opset,
                                  dynamo=False, do_constant_folding=True)
        except Exception as e:
            raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0]}; "
                              "try another export.opset or the tflite format") from e
        if external:
            onnx_files.consolidate(target, external=True)
            target.replace(out)
            onnx_files.data_file(target).replace(onnx_files.data_file(out))
            shutil.rmtree(target.parent)
        tied = tie_embeddings(out, external)
        self.check(out, large=external)
        info = {"inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in input_names],
                "outputs": [output_name], "opset": opset, "external_data": external}
        if tied:
            info["tied_weights"] = tied
        if io is not None:
            info.update(inputs=io["inputs"], outputs=names_out, kv_cache=io["kv_cache"])
        if external:
            info["external_data_note"] = (f"{weight_bytes / 1024**3:.2f} GB of weights exceed ONNX's 2 GB protobuf "
                                          f"limit: they are in {out.name}.data, which must stay beside the file")
        return info

    @staticmethod
    def check(path: Path, large: bool = False) -> None:
        """Fail if the file is not a valid ONNX model or ONNX Runtime cannot load it."""
        import onnx
        import onnxruntime as ort

        try:
            onnx.checker.check_model(str(path) if large else onnx.load(str(path)))
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ExportError(f"{path.name} is not a loadable ONNX model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from e


def tie_embeddings(path: Path, external: bool) -> list[list[str]]:
    """Store a tied embedding table once. The exporter writes an input embedding [V, H] for the
    Gather and, folded, its transpose [H, V] for the output head's MatMul: twice the largest tensor
    of a small LM. The Gather is rewritten to read the transposed table by column (Gather axis=1, then
    Transpose), so one [H, V] table serves both and quantizes once. Returns the (dropped, kept) pairs."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    heads = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    tied = []
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[0] not in inits or len(inits[node.input[0]].dims) != 2:
            continue
        if any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        table = inits[node.input[0]]
        for head in heads:
            weight = inits[head.input[1]]
            if list(weight.dims) != list(table.dims)[::-1]:
                continue
            if not np.array_equal(numpy_helper.to_array(table).T, numpy_helper.to_array(weight)):
                continue
            at = list(graph.node).index(node)
            by_column = node.output[0] + "_by_column"
            graph.node.remove(node)
            graph.node.insert(at, helper.make_node("Transpose", [by_column], [node.output[0]],
                                                   name=node.name + "_tied_transpose", perm=[1, 2, 0]))
            graph.node.insert(at, helper.make_node("Gather", [weight.name, node.input[1]], [by_column],
                                                   name=node.name + "_tied", axis=1))
            graph.initializer.remove(table)
            tied.append([table.name, weight.name])
            break
    if tied:
        onnx_files.save(model, path, external)
    return tied


FUSION_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert"}


def sample_feeds(vocab_size: int, seed: int = 0) -> dict:
    """Two token sequences (one padded) to compare graphs on."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(5, max(6, min(vocab_size, 30000)), (2, 48)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def fused_graph(base: Path, out: Path, config: dict, tolerance: float, sample: Callable[[], dict] | None = None, *,
                seed: int = 0) -> tuple[Path, dict]:
    """ONNX Runtime's fusions of ``base`` written to ``out`` if the fused graph matches the base within
    ``tolerance`` on sample inputs (``sample()``, by default two sequences of random ids); returns the
    graph to use and what the sidecar says about it."""
    import numpy as np
    import onnxruntime as ort

    from kd_edge.quantize.onnx_precisions import fuse

    model_type = FUSION_MODEL_TYPES.get(config.get("model_type", ""))
    if model_type is None:
        return base, {"fusions": None, "fusions_note": f"no ONNX Runtime fusions for model_type "
                                                        f"'{config.get('model_type')}'"}
    try:
        counts = fuse(base, out, model_type=model_type, num_heads=config["num_attention_heads"],
                      hidden_size=config["hidden_size"])
        feeds = sample() if sample else sample_feeds(config.get("vocab_size", 1000), seed)
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
