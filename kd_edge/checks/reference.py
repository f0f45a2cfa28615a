"""The exact student: what every exported file's |Δ| is measured against.

An fp32 file and the PyTorch student run in fp32 are two roundings of one function: different
kernels sum in different orders, and each lands within its own rounding error of the true value.
Measuring a file against PyTorch's fp32 output adds PyTorch's rounding error to the file's; on a
causal LM, whose residual stream reaches magnitudes of several hundred, those errors alone are
~7e-5 on the logits. Both are measured against the student computed in float64 instead, so a file's
|Δ| is its own error, and PyTorch's fp32 error is reported beside it for scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from kd_edge.data.packed import Packed

REFERENCE = "the student computed in float64"


@contextlib.contextmanager
def in_float64(module: "torch.nn.Module") -> Iterator["torch.nn.Module"]:
    """``module`` with its floating-point weights in float64, back to float32 afterwards (exact:
    every float32 value is a float64 value). transformers keeps some small tables in float32 even
    then (the rotary cos/sin of Llama-style models), as every fp32 runtime does."""
    import torch

    module.to(torch.float64)
    try:
        with torch.no_grad():
            yield module
    finally:
        module.to(torch.float32)


def outputs(module: "torch.nn.Module", ids: "Packed") -> np.ndarray:
    """The export module's (input_ids, attention_mask) -> output on every text, one at a time
    without padding, in the module's own precision."""
    import torch

    rows = []
    with torch.no_grad():
        for i in range(len(ids)):
            x = torch.as_tensor(np.asarray(ids[i], np.int64))[None]
            rows.append(module(x, torch.ones_like(x)).numpy())
    return np.concatenate(rows)


def exact_outputs(module: "torch.nn.Module", ids: "Packed") -> np.ndarray:
    """``outputs`` computed in float64."""
    with in_float64(module):
        return outputs(module, ids)


class Parity:
    """How far a file's outputs are from the reference, judged as ``numpy.allclose`` does: every
    element within ``atol + rtol * |reference|``. Accumulates over texts, signatures and steps;
    keeps the element that came closest to (or went furthest past) its bound."""

    def __init__(self, atol: float, rtol: float):
        self.atol, self.rtol = atol, rtol
        self.max_abs_diff = 0.0
        self.ratio = 0.0  # max over elements of |Δ| / (atol + rtol |ref|); ≤ 1 passes
        self.worst: tuple[float, float] = (0.0, 0.0)  # (|Δ|, |reference|) at that element

    def add(self, got: np.ndarray, ref: np.ndarray) -> float:
        """Count one comparison; return its max |Δ|."""
        diff = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
        if not diff.size:
            return 0.0
        scale = np.abs(np.asarray(ref, np.float64))
        ratios = diff / (self.atol + self.rtol * scale)
        i = int(np.argmax(ratios))
        if ratios.flat[i] > self.ratio:
            self.ratio, self.worst = float(ratios.flat[i]), (float(diff.flat[i]), float(scale.flat[i]))
        top = float(diff.max())
        self.max_abs_diff = max(self.max_abs_diff, top)
        return top

    def record(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "allclose_ratio": self.ratio, "atol": self.atol, "rtol": self.rtol,
                "worst_abs_diff": self.worst[0], "worst_reference_abs": self.worst[1]}


def fp32_reason(record: dict, pytorch_fp32: float | None) -> tuple[bool, str]:
    """The verdict of an fp32 file from a ``Parity.record()`` and which bound held: |Δ| ≤ atol
    everywhere, or only with the relative part (|Δ| ≤ atol + rtol·|student| per element); with
    PyTorch's own fp32 error beside it when known."""
    atol, rtol, top = record["atol"], record["rtol"], record["max_abs_diff"]
    ok = record["allclose_ratio"] <= 1.0
    if top <= atol:
        reason = f"max |Δ| {top:.2e} ≤ atol {atol:.0e}"
    elif ok:
        reason = (f"|Δ| ≤ {atol:.0e} + {rtol:.0e}·|student| everywhere (max |Δ| {top:.2e}; the closest element: "
                  f"|Δ| {record['worst_abs_diff']:.2e} where |student| is {record['worst_reference_abs']:.3g})")
    else:
        reason = (f"|Δ| {record['worst_abs_diff']:.2e} > {atol:.0e} + {rtol:.0e}·|student| where |student| is "
                  f"{record['worst_reference_abs']:.3g} (max |Δ| {top:.2e})")
    if pytorch_fp32 is not None:
        reason += f" from the student in float64 (PyTorch fp32: {pytorch_fp32:.2e})"
    return ok, reason
