"""Quantization of exported files, picked by ``format:precision``; each format's module in
kd_edge/formats/ declares its precisions and the function that makes each from the fp32 file."""

from __future__ import annotations

from kd_edge.formats import FORMATS
from kd_edge.registry import Registry

QUANTIZERS: Registry = Registry("quantizer")
for _fmt in FORMATS.values():
    for _p in _fmt.precisions:
        if _p.make is not None:
            QUANTIZERS.declare(f"{_fmt.name}:{_p.name}", _p.make, requires=_p.requires, extra=_p.extra,
                               summary=_p.summary[:1].upper() + _p.summary[1:] + ".")
