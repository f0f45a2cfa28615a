"""Export: turn the PyTorch student into files a device runtime loads. Which formats exist, and how
each is exported, is declared by the format's module in kd_edge/formats/."""

from __future__ import annotations

from kd_edge.formats import FORMATS
from kd_edge.registry import Registry

EXPORTERS: Registry = Registry("exporter")
for _fmt in FORMATS.values():
    EXPORTERS.declare(_fmt.name, _fmt.exporter, requires=_fmt.requires, extra=_fmt.extra, summary=_fmt.summary)
