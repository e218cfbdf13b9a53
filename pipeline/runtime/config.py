"""Typed values from untrusted launch-file YAML, with errors a user can act on.

`convert` is msgspec's conversion (types, unknown keys, declared ranges, a Params `__post_init__`)
with each failure rewritten as one line that names the file (or the `--set` that gave the value),
the key path, what was expected and the value found, e.g.
`launch.yaml: nodes.sim.params.rate_hz: expected float > 0.0, got 0`. `check_finite` and
`larger_than` walk a whole launch file once, before any conversion. `parse_set` reads `--set` values.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import msgspec.inspect
import yaml

from pipeline.errors import ConfigError

__all__ = ["MAX_PARAMS_BYTES", "YAML_VALUE_ERRORS", "check_finite", "convert", "larger_than", "parse_set"]


def convert(value: Any, typ: type, where: str, key: str, strict: bool = True,
            origin: dict[str, str] | None = None) -> Any:
    """`value` as `typ`, or ConfigError `WHERE: KEY: message`. `origin` names where a top-level
    key of `value` came from when that is not `where` (key -> e.g. "--set sim.speed=3")."""
    try:
        return msgspec.convert(value, typ, strict=strict)
    except msgspec.ValidationError as exc:
        sub, msg = _where(exc)
        full = ".".join(k for k in (key, sub) if k).replace(".[", "[")
        found, got = _value_at(value, sub)
        if found and msg.startswith("expected") and ", got" not in msg:  # a declared range: say what was given
            msg += f", got {got!r}"
        unknown = re.match(r"unknown key '(.+)'$", msg)
        if unknown:
            allowed = _fields_at(typ, sub)
            if allowed:
                msg += f" (expected one of: {', '.join(allowed)})"
        top = unknown.group(1) if unknown and not sub else re.split(r"[.\[]", sub)[0]
        if not top and (named := re.match(r"(\w+)[.:\[]", msg)):
            top = named.group(1)  # a check in the Struct's __post_init__ names its key first
        if origin and top in origin:
            where = origin[top]
        raise ConfigError(f"{where}: {full + ': ' if full else ''}{msg}") from None


def check_finite(value: Any, where: str, key: str) -> None:
    """ConfigError for the first NaN or infinity in `value`: JSON, which carries params to each node
    process, cannot hold them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key}: expected a finite number, got {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, where, f"{key}[{i}]")


def larger_than(value: Any, limit: int) -> bool:
    """Whether `value` holds more than `limit` bytes of strings plus 8 per item; an alias shared a
    million times counts a million times, and the walk stops at the limit."""
    stack, left = [value], limit
    while stack and left >= 0:
        v = stack.pop()
        left -= 8 + (len(v) if isinstance(v, (str, bytes)) else 0)
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set)):
            stack.extend(v)
    return left < 0


def _where(exc: msgspec.ValidationError) -> tuple[str, str]:
    """Split msgspec's "Expected `int`, got `str` - at `$.nodes.sim`" into (key path, message)."""
    text = str(exc)
    msg, _, at = text.partition(" - at `")
    key = at.rstrip("`").removeprefix("$").lstrip(".")
    msg = re.sub(r"`(\w+)`", r"\1", msg) if msg.startswith("Expected") else msg.replace("`", "'")
    msg = msg.replace("Object contains unknown field", "unknown key")
    msg = msg.replace("Object missing required field", "missing required key")
    return key, msg[:1].lower() + msg[1:]


def _parts(path: str) -> list[str]:
    return re.findall(r"[^.\[\]]+|\[\d+\]", path)


def _value_at(value: Any, path: str) -> tuple[bool, Any]:
    """The value at a msgspec key path such as `cv_ks[1]` or `models.vehicle`, if there is one."""
    for part in _parts(path):
        try:
            value = value[int(part[1:-1])] if part.startswith("[") else value[part]
        except (LookupError, TypeError, ValueError):
            return False, None
    return True, value


def _fields_at(typ: type, path: str) -> list[str]:
    """The keys a Struct at `path` inside `typ` accepts ([] where that is not a Struct)."""
    info: Any = msgspec.inspect.type_info(typ)
    for part in _parts(path):
        if isinstance(info, msgspec.inspect.StructType):
            info = next((f.type for f in info.fields if f.encode_name == part), None)
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType)):
            info = info.item_type
        else:
            return []
    return [f.encode_name for f in info.fields] if isinstance(info, msgspec.inspect.StructType) else []


MAX_PARAMS_BYTES = 64 << 10  # per node: strings' bytes plus 8 per item (an estimate of its size)
# What PyYAML's constructors raise, instead of a YAMLError, for an explicit tag with a value it cannot
# take (`!!int x`, `!!timestamp x`).
YAML_VALUE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--set node.param=value` overrides; the value is parsed as YAML (so `5` is an int). A longer
    path sets one key of a mapping param (`predictor.models.vehicle=v.onnx`, see `with_overrides`)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not node or not param:
            raise ConfigError(f"--set {item!r}: expected node.param=value")
        given = f"--set {key}={value[:80]}"  # how value errors name it, as `convert` does
        try:
            parsed = yaml.safe_load(value)
        except (yaml.YAMLError, *YAML_VALUE_ERRORS) as exc:
            raise ConfigError(f"{given}: value is not valid YAML: {exc}") from None
        if larger_than(parsed, MAX_PARAMS_BYTES):  # a value that contains itself is infinite
            raise ConfigError(f"{given}: value larger than the limit of {MAX_PARAMS_BYTES} bytes")
        out.setdefault(node, {})[param] = parsed
    return out


def with_overrides(params: dict[str, Any], sets: dict[str, Any], node: str) -> dict[str, Any]:
    """`params` with the `--set` values of `node` applied: `key` replaces a param, `key.sub` one entry of a
    mapping param (as ROS 2 nested parameter names do), the rest of the mapping kept."""
    out = dict(params)
    for key, value in sets.items():
        *path, last = key.split(".")
        at = out
        for i, part in enumerate(path):
            sub = at.get(part, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"--set {node}.{key}: {node}.{'.'.join(path[:i + 1])} is a "
                                  f"{type(sub).__name__}, not a mapping")
            at[part] = at = dict(sub)
        at[last] = value
    return out
