"""The JSON Schema of report.json, and validation against it."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent / "report.schema.json"


def schema() -> dict:
    """The report schema (draft 2020-12), with the formats and precisions kd_edge/formats/ declares as
    the enums of a row's ``format`` and ``precision``."""
    from kd_edge.formats import FORMATS

    doc = json.loads(SCHEMA_PATH.read_text())
    row = doc["$defs"]["row"]["properties"]
    row["format"]["enum"] = ["pytorch", *FORMATS]
    row["precision"]["enum"] = list(dict.fromkeys(p for f in FORMATS.values() for p in f.precision_names))
    return doc


def validate(report: dict) -> None:
    """Raise jsonschema.ValidationError when ``report`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)
