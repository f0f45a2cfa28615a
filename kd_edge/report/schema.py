"""The JSON Schema of report.json, and validation against it."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent / "report.schema.json"


def schema() -> dict:
    """The report schema (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text())


def validate(report: dict) -> None:
    """Raise jsonschema.ValidationError when ``report`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)
