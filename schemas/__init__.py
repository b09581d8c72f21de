"""JSON Schemas of every FarmEye wire message and event, shipped with the package.

The ``.json`` files are the contract a device written in any language can
validate against; ``docs/protocol.md`` explains them. Shared definitions live
in ``common.json`` and are referenced as ``common.json#/$defs/<name>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent
"""Folder holding the ``<name>.json`` schema files."""


def load(name: str) -> dict[str, Any]:
    """Return a fresh copy of the schema ``name`` (``"hello"`` or ``"hello.json"``)."""
    file_name = name if name.endswith(".json") else f"{name}.json"
    path = SCHEMA_DIR / file_name
    if path.parent != SCHEMA_DIR or not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCHEMA_DIR.glob("*.json")))
        raise FileNotFoundError(f"no schema named {name!r}; known schemas: {known}")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema
