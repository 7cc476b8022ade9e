"""The config reference (``docs/config.md``), generated from the config model.

Every key's type, default, bounds and meaning come from :mod:`gateway.proxy.config` (the
fields' annotations, constraints and docstrings; each model's ``RELOAD`` table says when a
change takes effect), so the reference cannot drift from what the loader accepts: a test
compares the committed file with :func:`render`. Regenerate with
``python -m gateway.proxy.reference > docs/config.md``.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.proxy.config import ProxyConfig

__all__ = ["missing", "render"]

_BOUNDS = (
    (annotated_types.Ge, "ge", ">= {}"),
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Le, "le", "<= {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.MinLen, "min_length", "at least {} long"),
    (annotated_types.MaxLen, "max_length", "at most {} long"),
)

HEADER = """\
# Configuration reference

<!-- Generated from gateway/proxy/config.py by `python -m gateway.proxy.reference`;
     tests/test_config_reference.py fails when this file is stale. Do not edit by hand. -->

The proxy reads one TOML file (`spice-migration-gateway proxy --config FILE`), at most 1 MiB.
Unknown keys are refused, values are not coerced (a port is a string `"HOST:PORT"`, a number is
a number), and every problem is reported with its dotted location. `proxy --check --config
FILE` runs every check that starting runs, without starting.

**Takes effect** says when a changed value is used: *restart* (stop and start the proxy),
*reload* (SIGHUP, `systemctl reload`, or `spice-migration-gateway control --socket PATH
reload`: the whole file is re-read, and a reload that changes a *restart* key is refused and
changes nothing), *reload (new connections)* (connections open at the reload keep the old
value), or *reload (the route is replaced)*: the route's listener is re-opened with the new
settings while its open connections finish with the old ones. Routes added through the control
API (`control route add`, the libvirt hook) are not in the file and a reload leaves them alone.

`HOST:PORT` is an IPv4 address or name with a port (1-65535), or `[IPv6]:PORT`.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(arg) for arg in args if arg is not type(None)]
        optional = type(None) in args
        return " or ".join(names) + (" (optional)" if optional else "")
    if origin is tuple:
        return f"array of {_type_name(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    name = getattr(annotation, "__name__", str(annotation))
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
            "UUID": "UUID string"}.get(name, name)  # fmt: skip


def _bounds(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for kind, attribute, text in _BOUNDS:
            if isinstance(item, kind):
                found.append(text.format(getattr(item, attribute)))
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            found.append(f"matches `{pattern}`")
    return ", ".join(found) or "-"


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "see below"
    if value == ():
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value!r}`"


def _nested(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested(arg)
        if found is not None:
            return found
    return None


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


def _sections(model: type[BaseModel], title: str, out: list[tuple[str, type[BaseModel]]]) -> None:
    out.append((title, model))
    for name, field in model.model_fields.items():
        nested = _nested(field.annotation)
        if nested is not None:
            array = "tuple" in str(field.annotation)
            _sections(nested, f"[[{name}]]" if array else f"[{name}]", out)


def missing() -> list[str]:
    """Keys without a docstring or without a RELOAD entry: each is a hole in the reference."""
    holes = []
    sections: list[tuple[str, type[BaseModel]]] = []
    _sections(ProxyConfig, "top level", sections)
    for title, model in sections:
        reload_table: dict[str, str] = getattr(model, "RELOAD", {})
        for name, field in model.model_fields.items():
            if not field.description:
                holes.append(f"{title} {name}: no docstring")
            if name not in reload_table:
                holes.append(f"{title} {name}: not in {model.__name__}.RELOAD")
    return holes


def render() -> str:
    sections: list[tuple[str, type[BaseModel]]] = []
    _sections(ProxyConfig, "top level", sections)
    lines = [HEADER]
    for title, model in sections:
        heading = "Top-level keys" if title == "top level" else f"`{title}`"
        lines += [f"## {heading}", ""]
        if model.__doc__:
            lines += [_cell(model.__doc__), ""]
        lines += [
            "| key | type | default | bounds | takes effect | meaning |",
            "|---|---|---|---|---|---|",
        ]
        reload_table: dict[str, str] = getattr(model, "RELOAD", {})
        for name, field in model.model_fields.items():
            cells = (
                f"`{name}`",
                _type_name(field.annotation),
                _default(field),
                _bounds(field),
                reload_table.get(name, "undocumented"),
                field.description or "undocumented",
            )
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
