"""Quantization-aware distillation: the fake-quantized linear computes what ONNX Runtime's int8 file
computes, passes gradients straight through, and leaves the saved student an ordinary float model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from kd_edge.distill import qat


def test_fake_int8_linear_computes_what_the_int8_file_specifies(tmp_path):
    """Against the exact integer arithmetic of kd-edge's int8 file (DynamicQuantizeLinear, MatMulInteger
    with the file's own int8 weights and scales). Not against ONNX Runtime's output on this machine: on a
    CPU without VNNI its u8s8 kernel sums pairs of products in saturating int16 (vpmaddubsw) and can be
    off by far more than the rounding."""
    import onnx
    from onnx import numpy_helper

    from kd_edge.quantize.onnx_precisions import quantize_onnx_int8

    torch.manual_seed(0)
    layer = nn.Linear(48, 24).eval()
    x = torch.randn(1, 7, 48) * 3 + 0.5
    src, dst = tmp_path / "l.onnx", tmp_path / "l.int8.onnx"
    torch.onnx.export(layer, (x,), str(src), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {1: "t"}})
    quantize_onnx_int8(src, dst)
    graph = onnx.load(str(dst)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    (w_name,) = [n for n, a in init.items() if n.endswith("_quantized") and a.dtype == np.int8]
    scale = init[w_name.replace("_quantized", "_scale")]
    assert not init[w_name.replace("_quantized", "_zero_point")].any()  # symmetric weights
    xv = x.numpy().astype(np.float64)
    lo, hi = min(0.0, xv.min()), max(0.0, xv.max())
    s = np.float32((hi - lo) / 255)
    z = np.clip(np.round(-lo / s), 0, 255)
    xq = np.clip(np.round(xv / s) + z, 0, 255)
    exact = ((xq - z) @ init[w_name].astype(np.float64)) * s * scale + layer.bias.detach().numpy()
    float_y = layer(x).detach().numpy()
    qat.enable(layer, bits=8)
    fake_y = layer(x).detach().numpy()
    assert np.abs(fake_y - exact).max() < 1e-4 < np.abs(float_y - exact).max()


def test_fake_int4_weights_take_16_levels_per_block():
    torch.manual_seed(1)
    w = torch.randn(4, 64)
    q = qat.fake_int4_weight(w, 32)
    for row in q:
        for block in row.reshape(2, 32):
            assert len(torch.unique(block)) <= 16
    assert (q - w).abs().max() < (w.abs().max() / 7)


def test_gradients_pass_straight_through():
    torch.manual_seed(2)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    qat.enable(b, bits=8)
    x = torch.randn(3, 8)
    a(x).sum().backward()
    b(x).sum().backward()
    torch.testing.assert_close(b.bias.grad, a.bias.grad)
    torch.testing.assert_close(b.weight.grad, qat.fake_uint8_activation(x).sum(0).expand(4, 8), rtol=1e-5, atol=1e-5)


def test_enable_and_disable_leave_the_parameters_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    keys = list(model.state_dict())
    assert qat.enable(model, bits=8) == 2
    assert list(model.state_dict()) == keys
    qat.disable(model)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_a_run_trains_its_last_steps_quantization_aware(tmp_path, tiny_teacher, tiny_data):
    from kd_edge.config import recipe_from_dict
    from kd_edge.pipeline import run_pipeline
    from kd_edge.preflight import resolve
    from tests.conftest import tiny_recipe_dict

    recipe = resolve(recipe_from_dict(tiny_recipe_dict(
        tiny_teacher, tiny_data, distill__quantization_aware={"share": 0.25},
        export={"artifacts": [{"format": "onnx", "precision": "int8"}], "int8_fallback": False},
        gate={"budgets": []}), "tiny"))
    run = tmp_path / "run"
    run_pipeline(recipe, run, progress=False, stop_after="verify")
    steps = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    flags = {s["step"]: s["quantization_aware"] for s in steps if "quantization_aware" in s}
    assert flags[2] == 0.0 and flags[8] == 1.0  # 8 steps, the last 2 quantization-aware
    from safetensors.torch import load_file

    keys = set(load_file(str(run / "student" / "model.safetensors")))
    assert keys and not any("parametriz" in k or "_kd_" in k for k in keys)
    record = json.loads((run / "verify" / "student.int8.onnx.json").read_text())
    assert record["passed"], record
