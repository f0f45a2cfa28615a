"""TFLite export through litert-torch (no TensorFlow). Shapes are fixed: one signature per
(batch, sequence) bucket, all sharing one copy of the weights."""

from __future__ import annotations

from pathlib import Path

import torch

from kd_edge.errors import ExportError
from kd_edge.export.capture import captured, tail


def signature_name(batch: int, seq: int) -> str:
    """The signature name of a bucket, e.g. ``b1_s128``."""
    return f"b{batch}_s{seq}"


class TfliteExporter:
    """litert-torch conversion of a module taking (input_ids, attention_mask) as int32."""

    def export(self, module: torch.nn.Module, out: Path, *, input_names: tuple[str, ...], output_name: str,
               shapes: list[tuple[int, int]], log_path: Path, kv_cache_size: int = 256, **_: object) -> dict:
        """Write ``out`` with one signature per shape; return the sidecar's description of it."""
        with captured(log_path):  # its import prints absl / oneDNN start-up lines from C++
            import litert_torch

        if hasattr(module, "static_step"):
            return self._export_decoder(litert_torch, module.static_step(kv_cache_size), out, shapes, log_path)

        converter = None
        # TFLite has no int64 inputs: litert-torch turns them into int32, so trace with int32.
        for batch, seq in shapes:
            sample = {n: torch.ones(batch, seq, dtype=torch.int32) for n in input_names}
            add = litert_torch.signature if converter is None else converter.signature
            converter = add(signature_name(batch, seq), module, sample_kwargs=sample)
        try:
            with captured(log_path):
                converter.convert().export(str(out))
        except Exception as e:
            raise ExportError(f"TFLite conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} "
                              f"[{tail(log_path)}]; see {log_path}, or export to onnx only") from e
        return {"inputs": [{"name": n, "dtype": "int32", "shape": ["batch", "sequence"]} for n in input_names],
                "outputs": [output_name],
                "signatures": [{"name": signature_name(b, s), "batch": b, "seq": s} for b, s in shapes]}

    @staticmethod
    def _export_decoder(litert_torch, step, out: Path, shapes: list[tuple[int, int]], log_path: Path) -> dict:
        """A causal LM: ``prefill_<T>`` per sequence length and ``decode``, over fixed KV buffers;
        inputs args_0 (tokens), args_1 (positions), args_2.. (key, value per layer), outputs output_0
        (logits) and output_1.. (the buffers, same order)."""
        if any(b != 1 for b, _ in shapes):
            raise ExportError("causal-LM TFLite files take batch 1: set export.tflite_shapes to [[1, T], ...], "
                              "one prefill length each")
        longest = max(s for _, s in shapes)
        if longest >= step.size:
            raise ExportError(f"export.kv_cache_size ({step.size}) must exceed the longest prefill ({longest}) "
                              "to leave room for decoding")
        converter = None
        for name, args in step.tflite_signatures([s for _, s in shapes]):
            add = litert_torch.signature if converter is None else converter.signature
            converter = add(name, step, sample_args=args)
        try:
            with captured(log_path):
                converter.convert().export(str(out))
        except Exception as e:
            raise ExportError(f"TFLite conversion of the decoder failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]} [{tail(log_path)}]; see {log_path}, or export to onnx "
                              "only") from e
        return {"inputs": [{"name": "args_0", "dtype": "int32", "shape": [1, "T"], "role": "tokens"},
                           {"name": "args_1", "dtype": "int32", "shape": ["T"], "role": "positions"}],
                "outputs": ["output_0 (logits)", "output_1.. (key/value buffers)"],
                "signatures": [{"name": f"prefill_{s}", "batch": 1, "seq": s, "kind": "prefill"} for _, s in shapes]
                + [{"name": "decode", "batch": 1, "seq": 1, "kind": "decode"}],
                "kv_cache": step.kv_cache()}
