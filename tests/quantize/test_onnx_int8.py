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
