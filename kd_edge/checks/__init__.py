"""How an exported file is compared with the PyTorch student, through the file's own runtime: shared by
the export stage (the int8 fallback measures a file before keeping it), the verify stage and
`kd-edge export MODEL_DIR`, so that no stage imports another.

- ``reference.py``: the student in float64, and the parity rule of an fp32 file;
- ``verdicts.py``: the metric drop and the pass/fail verdict of a file;
- ``encoder.py``: an encoder's file on every text (ONNX / TFLite), its metrics and agreement (``Checker``);
- ``causal_lm.py``: a causal LM's file driven token by token over its KV cache (``LMChecker``);
- ``generations.py``: greedy samples of the PyTorch models from fixed held-out prompts, and whether they loop.
"""
