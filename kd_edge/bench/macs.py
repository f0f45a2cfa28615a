"""Multiply-accumulates per inference, counted by PyTorch's FLOP counter on one forward pass at the
benchmark's input shape (every matmul, attention included; an exported file computes the same
function, so it has the student's count)."""

from __future__ import annotations

import torch


def count_macs(task, model, meta: dict, batch: int, seq: int) -> int:
    """MACs of one forward pass of ``model`` on a batch × seq input (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    from kd_edge.tasks.base import Batch

    ids = torch.full((batch, seq), 1000 % max(model.config.vocab_size, 1), dtype=torch.long)
    inputs = Batch(None, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        task.forward(model, inputs, meta=meta)
    return int(counter.get_total_flops() // 2)
