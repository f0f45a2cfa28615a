"""``distill.quantization_aware``: the last part of training sees the student as its quantized file will
compute it, so the int8 (or int4) export keeps the fp32 student's quality.

For the last ``share`` of the steps every linear layer of the student computes with fake-quantized
tensors (quantize, then dequantize: the rounding error the runtime will make, with the gradient passed
straight through, Jacob et al. 2018 / Bengio's straight-through estimator):

- ``bits: 8`` is ONNX Runtime's dynamic int8 (kd-edge's ``onnx int8``): weights int8, symmetric, one
  scale per output channel; activations uint8 per tensor, scale and zero point from each input's own
  range, which always includes 0 (DynamicQuantizeLinear);
- ``bits: 4`` is the 4-bit weight-only formats (``onnx int4``'s MatMulNBits, GGUF Q4, GenAI int4):
  weights 4-bit, asymmetric, one scale and zero point per block of ``block_size`` inputs; activations
  stay in float.

Only the linears' ``forward`` is swapped (the parameters and their names stay as they are), so
checkpoints, resuming and the saved student are unchanged: what the student keeps are its float
weights, trained to sit well on the grid. Embedding tables are left in float here (their int8 rows
are per-row tables, whose rounding a frozen table does not learn from anyway).
"""

from __future__ import annotations

import types

import torch
from torch import nn

from kd_edge.distill.callbacks import TrainerCallback


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return x + (q - x).detach()


def fake_int8_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel (rows of a torch Linear's [out, in] weight)."""
    scale = w.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return _ste(w, torch.clamp(torch.round(w / scale), -127, 127) * scale)


def fake_uint8_activation(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear's uint8: the tensor's range widened to include 0, 255 steps, zero point rounded."""
    lo = x.detach().amin().clamp(max=0.0)
    hi = x.detach().amax().clamp(min=0.0)
    scale = ((hi - lo) / 255.0).clamp(min=1e-12)
    zero = torch.clamp(torch.round(-lo / scale), 0, 255)
    return _ste(x, (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale)


def fake_int4_weight(w: torch.Tensor, block: int) -> torch.Tensor:
    """Asymmetric 4-bit with a scale and zero point per block of ``block`` inputs (MatMulNBits' layout)."""
    out, inp = w.shape
    pad = (-inp) % block
    wp = torch.nn.functional.pad(w, (0, pad)).reshape(out, -1, block)
    d = wp.detach()
    lo, hi = d.amin(-1, keepdim=True).clamp(max=0.0), d.amax(-1, keepdim=True).clamp(min=0.0)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    zero = torch.clamp(torch.round(-lo / scale), 0, 15)
    q = (torch.clamp(torch.round(wp / scale) + zero, 0, 15) - zero) * scale
    return _ste(w, q.reshape(out, -1)[:, :inp])


def _int8_forward(self, x):
    return nn.functional.linear(fake_uint8_activation(x), fake_int8_weight(self.weight), self.bias)


def _int4_forward(self, x):
    return nn.functional.linear(x, fake_int4_weight(self.weight, self._kd_block), self.bias)


def enable(model: nn.Module, bits: int, block_size: int = 32) -> int:
    """Make every Linear of ``model`` compute with fake-quantized tensors; returns how many."""
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and "forward" not in module.__dict__:
            module._kd_block = block_size
            module.forward = types.MethodType(_int8_forward if bits == 8 else _int4_forward, module)
            n += 1
    return n


def disable(model: nn.Module) -> None:
    """Give every Linear back its own forward."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and "forward" in module.__dict__:
            del module.forward
            module.__dict__.pop("_kd_block", None)


class QuantizationAwareCallback(TrainerCallback):
    """Turns fake quantization on at step ``start`` (or at once when training resumes past it) and off
    when training ends, so that the student is saved as an ordinary float model."""

    def __init__(self, model: nn.Module, start: int, bits: int, block_size: int):
        self.model, self.start, self.bits, self.block = model, start, bits, block_size
        self.on = False

    def _maybe_enable(self, step: int) -> None:
        if not self.on and step >= self.start:
            enable(self.model, self.bits, self.block)
            self.on = True

    def on_train_begin(self, state, control):
        self._maybe_enable(state.step)

    def on_step_end(self, state, control, logs):
        logs["quantization_aware"] = float(self.on)
        self._maybe_enable(state.step)

    def on_train_end(self, state, control):
        disable(self.model)
        self.on = False
