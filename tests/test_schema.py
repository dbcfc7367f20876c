"""`fieldlink schema`: every config kind has a JSON Schema, and every field in it is documented."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

KINDS = ["edge", "cloud", "sim"]


def schema_of(kind: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "fieldlink", "schema", kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def undocumented(schema: dict[str, Any]) -> list[str]:
    missing: list[str] = []
    models = {"(root)": schema, **schema.get("$defs", {})}
    for model_name, model in models.items():
        for field, spec in model.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{model_name}.{field}")
    return missing


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_has_a_description(kind: str) -> None:
    schema = schema_of(kind)
    assert schema.get("properties"), "the schema describes no fields"
    assert undocumented(schema) == []


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fields_are_forbidden_everywhere(kind: str) -> None:
    schema = schema_of(kind)
    for name, model in schema.get("$defs", {}).items():
        if model.get("type") == "object" and "properties" in model:
            assert model.get("additionalProperties") is False, name


def test_edge_schema_includes_the_modbus_driver_models() -> None:
    defs = schema_of("edge")["$defs"]
    assert {"ModbusBus", "ModbusDevice", "ModbusPoint"} <= set(defs)
    assert defs["ModbusPoint"]["properties"]["type"]["$ref"].endswith("RegisterType")


def test_unknown_kind_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fieldlink", "schema", "gateway"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid choice: 'gateway'" in result.stderr
