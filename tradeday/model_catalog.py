"""``tradeday models``: every registered model and its params, read from the registry.

The text comes from each params class's JSON schema, the same schema the Prefect form is
built from, so the CLI, the UI and validation cannot disagree about a default or a bound.
"""

from __future__ import annotations

from typing import Any

import models

_BOUNDS = (
    ("exclusiveMinimum", "> {}"),
    ("minimum", "≥ {}"),
    ("exclusiveMaximum", "< {}"),
    ("maximum", "≤ {}"),
    ("pattern", "matches {}"),
)


def bounds(prop: dict[str, Any]) -> str:
    """A property's limits as text, e.g. ``≥ 1, ≤ 360``; empty when it has none."""
    return ", ".join(fmt.format(prop[key]) for key, fmt in _BOUNDS if key in prop)


def _type(prop: dict[str, Any]) -> str:
    if "type" in prop:
        return str(prop["type"])
    return " | ".join(str(p.get("type", "?")) for p in prop.get("anyOf", []))


def describe_models() -> str:
    """Each model: name and title, its docstring's summary, then one line per param."""
    blocks = []
    for cls in models.params_classes():
        schema = cls.model_json_schema()
        name = schema["properties"]["name"]["default"]
        summary = (schema.get("description") or "").split("\n\n")[0].replace("\n", " ")
        lines = [f"{name}  ({schema.get('title', name)})", f"  {summary}"]
        params = [(k, v) for k, v in schema["properties"].items() if k != "name"]
        width = max((len(k) for k, _ in params), default=0)
        for key, prop in params:
            limits = bounds(prop)
            lines.append(
                f"  {key:<{width}}  {_type(prop)}, default {prop.get('default')!r}"
                + (f", {limits}" if limits else "")
                + (f": {prop['description']}" if prop.get("description") else "")
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
