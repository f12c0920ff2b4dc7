"""Typed, frozen configuration: YAML/dict → dataclasses, with one clear error per mistake.

Every component declares a frozen dataclass (``InversionConfig``, ``ViewConfig`` …) with a
comment per field. ``from_dict`` maps a plain mapping onto it, recursing into nested
dataclasses, and rejects unknown keys and wrong types naming the full key path.

``load_yaml`` refuses files over :data:`MAX_YAML_BYTES` and documents whose aliases would
expand to more than :data:`MAX_YAML_NODES` nodes ("billion laughs": a 1 KB file of nested
aliases took 30 s and 6 GB once something walked it), counted on the composed node graph
before any Python object is built.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ganviews.core.errors import ConfigError

T = TypeVar("T")

MAX_YAML_BYTES = 1 << 20  # a pipeline config is a few KB; a manifest is never YAML
MAX_YAML_NODES = 100_000  # nodes after expanding every alias (a real config has a few hundred)
_ENDLESS = 1 << 62  # the count given to a recursive alias (and the cap of any count)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping top level is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: {size} bytes is too large for a config (at most {MAX_YAML_BYTES})"
        )
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        expanded = _expanded_nodes(node)
        if expanded > MAX_YAML_NODES:
            amount = "without end" if expanded >= _ENDLESS else f"to {expanded} nodes"
            raise ConfigError(
                f"{path}: its aliases expand {amount} (at most {MAX_YAML_NODES} nodes); "
                "refusing an alias-expansion bomb"
            )
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _expanded_nodes(root: yaml.Node | None) -> int:
    """Number of nodes the document has once every alias is expanded, computed on the shared
    node graph (each node once, memoised; iterative, so deep nesting cannot overflow)."""
    if root is None:
        return 0
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered, children not yet summed: meeting one is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if not children_done and id(node) in open_nodes:
            return _ENDLESS  # a recursive alias expands without end
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes.get(id(c), 0) for c in children), _ENDLESS)
            open_nodes.discard(id(node))
        else:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, key: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; errors name the dotted key (``invert.steps``)."""
    errors = _collect(cls, data or {}, key)
    if errors:
        raise ConfigError("\n".join(errors))
    return _build(cls, data or {})


def config_from(cls: type[T], value: Any, *, key: str = "") -> T:
    """The one config coercion, used at the CLI and flow edges: ``None`` → ``cls()``, an
    instance as is, a YAML path or a mapping → :func:`from_dict` (ConfigError names the key).
    Library functions take the dataclass itself."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, (str, Path)):
        value = load_yaml(value)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{key or 'config'}: expected a {cls.__name__}, a mapping or a YAML path, "
            f"got {type(value).__name__}"
        )
    return from_dict(cls, value, key=key)


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain YAML/JSON-friendly data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _collect(cls: type, data: Any, prefix: str) -> list[str]:
    if not isinstance(data, Mapping):
        return [f"{prefix or '<root>'}: expected a mapping, got {type(data).__name__}"]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors = []
    for name in data:
        if name not in fields:
            allowed = ", ".join(sorted(fields))
            errors.append(f"{_dotted(prefix, str(name))}: unknown key (allowed: {allowed})")
    for name, field in fields.items():
        full = _dotted(prefix, name)
        if name not in data:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                errors.append(f"{full}: required key is missing")
            continue
        errors.extend(_check_value(hints[name], data[name], full))
    return errors


def _check_value(tp: Any, value: Any, key: str) -> list[str]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return []
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return []
        for arg in args:
            if arg is type(None):
                continue
            if not _check_value(arg, value, key):
                return []
        return [f"{key}: {value!r} does not match {_type_name(tp)}"]
    if origin is typing.Literal:
        return [] if value in args else [f"{key}: {value!r} is not one of {list(args)}"]
    if dataclasses.is_dataclass(tp):
        return _collect(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return [f"{key}: expected a list, got {value!r}"]
        inner = args[0] if args else Any
        return [e for i, v in enumerate(value) for e in _check_value(inner, v, f"{key}[{i}]")]
    if origin is dict:
        if not isinstance(value, Mapping):
            return [f"{key}: expected a mapping, got {value!r}"]
        inner = args[1] if len(args) == 2 else Any
        return [e for k, v in value.items() for e in _check_value(inner, v, f"{key}.{k}")]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{key}: expected a number, got {value!r}"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{key}: expected an integer, got {value!r}"]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{key}: expected true/false, got {value!r}"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{key}: expected a string, got {value!r}"]
    if tp is Path:
        return [] if isinstance(value, (str, Path)) else [f"{key}: expected a path, got {value!r}"]
    return []


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {name: _build(hints[name], v) for name, v in value.items()}
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is not type(None) and not _check_value(arg, value, ""):
                return _build(arg, value)
        return value
    if origin is tuple:
        inner = args[0] if args else Any
        return tuple(_build(inner, v) for v in value)
    if origin is list:
        inner = args[0] if args else Any
        return [_build(inner, v) for v in value]
    if origin is dict:
        inner = args[1] if len(args) == 2 else Any
        return {k: _build(inner, v) for k, v in value.items()}
    if tp is float:
        return float(value)
    if tp is Path:
        return Path(value)
    return value
