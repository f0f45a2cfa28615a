import pytest
import numpy as np
import onnx
import onnxruntime as ort
import torch

from kd_edge.export import EXPORTERS
from kd_edge.quantize import QUANTIZERS
from kd_edge.tasks import TASKS


def test_int8_is_smaller_and_close(wide_teacher, tmp_path):
    folder = wide_teacher
    task = TASKS.get("sentence_embedding")()
    module = task.export_module(task.load_model(folder, eager=True), {"pooling": "mean", "normalize": True})
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    EXPORTERS.get("onnx")().export(module, fp32, input_names=("input_ids", "attention_mask"),
                                   output_name="sentence_embedding", opset=17)
    info = QUANTIZERS.get("onnx:int8")(fp32, int8, per_channel=True)
    assert info["quantization"]["weight_type"] == "int8"
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear")
               for n in onnx.load(str(int8)).graph.node)
    ids = torch.randint(5, 40, (4, 12))
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((4, 12), np.int64)}
    a = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.98


# -- the export matrix: every precision from one fp32 base ----------------------------------------------------------

NAMES = ("input_ids", "attention_mask")


@pytest.fixture(scope="module")
def three_layer(tmp_path_factory):
    """A 3-layer, 128-wide BERT embedder: a middle layer to keep quantized when the edges are not."""
    from tests.conftest import write_tiny_bert

    folder = write_tiny_bert(tmp_path_factory.mktemp("three") / "bert3", layers=3, hidden=128, heads=4)
    task = TASKS.get("sentence_embedding")()
    module = task.export_module(task.load_model(folder, eager=True), {"pooling": "mean", "normalize": True})
    out = tmp_path_factory.mktemp("three-onnx")
    fp32 = out / "m.onnx"
    EXPORTERS.get("onnx")().export(module, fp32, input_names=NAMES, output_name="sentence_embedding", opset=17)
    tfl = out / "m.tflite"
    EXPORTERS.get("tflite")().export(module, tfl, input_names=NAMES, output_name="sentence_embedding",
                                     shapes=[(1, 16)], log_path=out / "log.txt")
    return folder, module, fp32, tfl


def _feeds(batch=3, seq=16):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def _ort(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _cos(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp16_halves_the_file_and_keeps_float_inputs_and_outputs(three_layer, tmp_path):
    _, _, fp32, _ = three_layer
    dst = tmp_path / "m.fp16.onnx"
    QUANTIZERS.get("onnx:fp16")(fp32, dst)
    assert dst.stat().st_size < 0.6 * fp32.stat().st_size
    model = onnx.load(str(dst))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    feeds = _feeds()
    a, b = _ort(fp32, feeds), _ort(dst, feeds)
    assert b.dtype == np.float32 and np.abs(a - b).max() < 1e-2


def test_static_int8_needs_calibration_data_and_uses_it(three_layer, tmp_path):
    from kd_edge.errors import QuantizeError

    _, _, fp32, _ = three_layer
    quantize = QUANTIZERS.get("onnx:int8-static")
    with pytest.raises(QuantizeError, match="needs calibration data.*--calibration"):
        quantize(fp32, tmp_path / "none.onnx", calibration=None)
    assert not (tmp_path / "none.onnx").exists()
    g = torch.Generator().manual_seed(2)
    calibration = []
    for n in range(20):
        ids = torch.randint(5, 60, (1, 8 + n % 8), generator=g).numpy()
        calibration.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    dst = tmp_path / "m.qdq.onnx"
    info = quantize(fp32, dst, calibration=calibration)
    assert info["quantization"]["calibration_examples"] == 20
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops.count("QuantizeLinear") >= 6 and ops.count("DequantizeLinear") >= 6
    assert dst.stat().st_size < 0.6 * fp32.stat().st_size
    feeds = _feeds()
    assert _cos(_ort(fp32, feeds), _ort(dst, feeds)).min() > 0.95


def test_fallback_levels_keep_attention_matmuls_then_the_edge_layers_in_float(three_layer, tmp_path):
    from kd_edge.quantize.onnx_precisions import sensitive_nodes

    _, _, fp32, _ = three_layer
    graph = onnx.load(str(fp32)).graph
    inits = {i.name for i in graph.initializer}
    level1 = sensitive_nodes(fp32, 1)
    nodes = [n for n in graph.node if n.name in set(level1)]
    assert len(nodes) == 2 * 3 and all(n.op_type == "MatMul" for n in nodes)  # scores and context, per layer
    assert not any(i in inits for n in nodes for i in n.input)  # no weight in float
    level2 = sensitive_nodes(fp32, 2)
    added = set(level2) - set(level1)
    assert any("/layer.0/" in n for n in added) and any("/layer.2/" in n for n in added)
    assert not any("/layer.1/" in n and "MatMul" in n for n in added)
    static = tmp_path / "m.int8-static.onnx"
    calibration = [{k: v[:1] for k, v in _feeds().items()}]
    QUANTIZERS.get("onnx:int8-static")(fp32, static, calibration=calibration, exclude=level1)
    plain = tmp_path / "plain.onnx"
    QUANTIZERS.get("onnx:int8-static")(fp32, plain, calibration=calibration)
    assert abs(static.stat().st_size - plain.stat().st_size) < 0.05 * plain.stat().st_size  # as small
    def quantize_ops(path):
        return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)

    assert quantize_ops(static) < quantize_ops(plain)  # fewer activations quantized, the same weights
    dst = tmp_path / "m.int8.onnx"
    QUANTIZERS.get("onnx:int8")(fp32, dst, exclude=level2)
    quantized = onnx.load(str(dst)).graph
    float_matmuls = {n.name for n in quantized.node if n.op_type == "MatMul"}
    int8_matmuls = [n.name for n in quantized.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert any("/layer.0/" in n for n in float_matmuls) and any("/layer.2/" in n for n in float_matmuls)
    assert int8_matmuls and all("/layer.1/" in n or "layer" not in n for n in int8_matmuls), int8_matmuls


@pytest.mark.parametrize("precision, max_ratio, min_cos", [("int8", 0.45, 0.98), ("int8-weights", 0.45, 0.99),
                                                           ("fp16", 0.65, 0.9999)])
def test_tflite_precisions_through_ai_edge_quantizer(three_layer, tmp_path, precision, max_ratio, min_cos):
    from kd_edge.device_runner import TfliteBackend

    _, _, _, tfl = three_layer
    dst = tmp_path / f"m.{precision}.tflite"
    info = QUANTIZERS.get(f"tflite:{precision}")(tfl, dst, log_path=tmp_path / "q.log")
    assert "ai-edge-quantizer" in info["quantization"]["method"]
    assert dst.stat().st_size < max_ratio * tfl.stat().st_size
    feeds = {k: v[:1].astype(np.int32) for k, v in _feeds(1).items()}
    a = TfliteBackend(str(tfl), threads=1).run(feeds)[0]
    b = TfliteBackend(str(dst), threads=1).run(feeds)[0]
    assert _cos(a, b).min() > min_cos


def test_fusions_are_kept_only_when_they_match(three_layer, tmp_path):
    from kd_edge.export.onnx import fused_graph

    folder, _, fp32, _ = three_layer
    import json

    config = json.loads((folder / "config.json").read_text())
    feeds = lambda: _feeds()  # noqa: E731
    graph, info = fused_graph(fp32, tmp_path / "fused.onnx", config, 1e-4, feeds)
    assert graph == tmp_path / "fused.onnx" and info["fusions"]["Attention"] == 3
    assert info["fusions_max_abs_diff"] <= 1e-4
    np.testing.assert_allclose(_ort(graph, _feeds()), _ort(fp32, _feeds()), atol=1e-4)
    # a tolerance no float reordering meets: the unfused graph is kept, and the sidecar says why
    graph, info = fused_graph(fp32, tmp_path / "fused2.onnx", config, 1e-12, feeds)
    assert graph == fp32 and info["fusions"] is None and "kept the unfused graph" in info["fusions_note"]
    assert not (tmp_path / "fused2.onnx").exists()
    graph, info = fused_graph(fp32, tmp_path / "fused3.onnx", {**config, "model_type": "llama"}, 1e-4, feeds)
    assert graph == fp32 and "no ONNX Runtime fusions" in info["fusions_note"]


def test_int8_of_a_tied_lm_stores_its_table_once_in_int8_blocks(tmp_path):
    from tests.conftest import export_tied_llama, prompt_feeds

    fp32, int8 = tmp_path / "lm.onnx", tmp_path / "lm.int8.onnx"
    model, _ = export_tied_llama(fp32, hidden=64)
    info = QUANTIZERS.get("onnx:int8")(fp32, int8)
    assert "MatMulNBits" in info["quantization"]["tied_table"]
    # a causal LM's step is weight-only int8 (no dynamic activation scale per tensor)
    assert info["quantization"]["method"].startswith("onnxruntime MatMulNBits (int8 weights symmetric, blocks of 64")
    graph = onnx.load(str(int8)).graph
    assert any(n.op_type == "MatMulNBits" for n in graph.node)
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeLinear")
                and any(i.name == n.input[1] for i in graph.initializer)]
    weights = sum(onnx.numpy_helper.to_array(i).nbytes for i in graph.initializer)
    assert weights / sum(p.numel() for p in model.parameters()) <= 1.1
    # no float copy of the vocabulary table is left; its int8 blocks are the only copy
    assert not [i.name for i in graph.initializer if sorted(i.dims) == [64, 500] and i.data_type == onnx.TensorProto.FLOAT]
    assert len([i for i in graph.initializer if list(i.dims) == [500, 1, 64]]) == 1
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, 500, (1, 9))
    feeds = prompt_feeds(sess, ids.numpy(), head_dim=16)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    got = sess.run(None, feeds)[0]
    assert got.shape == ref.shape
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.8
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_int4_packs_matmul_weights_in_blocks(three_layer, tmp_path):
    _, _, fp32, _ = three_layer
    int8, int4 = tmp_path / "m.int8.onnx", tmp_path / "m.int4.onnx"
    QUANTIZERS.get("onnx:int8")(fp32, int8)
    info = QUANTIZERS.get("onnx:int4")(fp32, int4)
    assert info["quantization"]["weight_type"] == "int4"
    ops = [n.op_type for n in onnx.load(str(int4)).graph.node]
    assert ops.count("MatMulNBits") >= 12  # 4 attention + 2 feed-forward MatMuls in each of 3 layers
    assert int4.stat().st_size < 0.85 * int8.stat().st_size  # 4 bits + an fp32 scale and a zero point per 16
    feeds = _feeds()
    assert _cos(_ort(fp32, feeds), _ort(int4, feeds)).min() > 0.95
