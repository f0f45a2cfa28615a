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


def fp32_reason(max_diff: float, tolerance: float, pytorch_fp32: float | None) -> tuple[bool, str]:
    """The verdict of an fp32 file, with PyTorch's own fp32 error beside it when known."""
    ok = max_diff <= tolerance
    reason = f"max |Δ| {max_diff:.2e} {'≤' if ok else '>'} {tolerance:.0e}"
    if pytorch_fp32 is not None:
        reason += f" from the student in float64 (PyTorch fp32: {pytorch_fp32:.2e})"
    return ok, reason
