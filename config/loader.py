"""Reading config files: YAML → environment substitution → pydantic, with located errors.

Secrets are written as ``${NAME}`` (or ``${NAME:-default}``) and filled in from the
environment after parsing, only inside string values, so a value can never inject YAML.
``$${`` stands for a literal ``${``.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from config.errors import ConfigError, Problem
from wire.topics import ID_PATTERN, UNIT_PATTERN

M = TypeVar("M", bound=BaseModel)

_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_document(path: Path) -> dict[str, Any]:
    """Parse a YAML file into a mapping, or raise :class:`ConfigError` saying why not."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [Problem("", f"cannot read the file: {exc.strerror}")]) from exc
    try:
        # libyaml's loader when PyYAML was built with it: ~4x faster and far less garbage
        # on configs of thousands of points; the same safe subset of YAML either way.
        doc = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [Problem("", f"{where}not valid YAML: {problem}")]) from exc
    if not isinstance(doc, dict):
        raise ConfigError(
            source, [Problem("", "the file must be a YAML mapping (key: value) at the top level")]
        )
    return doc


def substitute_env(value: Any, env: Mapping[str, str], path: str, problems: list[Problem]) -> Any:
    """Return ``value`` with ``${VAR}`` filled in; record an unset variable as a problem."""
    if isinstance(value, str):
        return _substitute_text(value, env, path, problems)
    if isinstance(value, dict):
        return {
            k: substitute_env(v, env, join_path(path, str(k)), problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _substitute_text(text: str, env: Mapping[str, str], path: str, problems: list[Problem]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(
            Problem(
                path,
                f"environment variable {name} is not set; export {name}=... before starting, "
                f"or give a default as ${{{name}:-value}}",
            )
        )
        return ""

    return _ENV_RE.sub(replace, text)


def join_path(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def validate(model: type[M], data: Any, prefix: str, problems: list[Problem]) -> M | None:
    """Validate ``data`` against ``model``; on failure add located problems and return None."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_from(exc, prefix, data, model))
        return None


def problems_from(
    exc: ValidationError, prefix: str, data: Any, model: type[BaseModel] | None = None
) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = [part for part in err["loc"] if not _is_union_tag(part)]
        path = prefix
        for part in loc:
            path = join_path(path, part)
        message = _message(err, model, loc)
        if message.startswith("@"):
            # A model validator located its problem below itself: "@points[3].name: ...".
            sub, _, message = message[1:].partition(": ")
            path = f"{path}{sub}" if sub.startswith("[") else join_path(path, sub)
        out.append(Problem(path, message))
    return out


def _is_union_tag(part: str | int) -> bool:
    # pydantic adds the model or function name of a union member to the location; users never
    # wrote those names, so they are dropped from the path.
    return isinstance(part, str) and (part[:1].isupper() or part.startswith("function-"))


def _message(err: Any, model: type[BaseModel] | None, loc: list[str | int]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field" + _allowed_hint(model, loc)
    if kind == "missing":
        return "required field is missing"
    pattern = (err.get("ctx") or {}).get("pattern")
    if kind == "string_pattern_mismatch" and pattern == UNIT_PATTERN:
        return (
            f"{err.get('input')!r} is not a valid unit: use 1 to 32 characters without "
            "backslash or control characters"
        )
    if kind == "string_pattern_mismatch" and pattern == ID_PATTERN:
        return (
            f"{err.get('input')!r} is not a valid name: use 1 to 128 letters, digits, "
            "'_', '.', ':' or '-', starting with a letter or digit (no spaces or '/')"
        )
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    given = err.get("input")
    if kind not in {"missing"} and not isinstance(given, dict | list) and given is not None:
        return f"{msg} (got {given!r})"
    return msg


def _allowed_hint(model: type[BaseModel] | None, loc: list[str | int]) -> str:
    names = _field_names_at(model, loc[:-1]) if model is not None else []
    if not names:
        return "; check its spelling against `fieldlink schema`"
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    guess = f"; did you mean '{close[0]}'?" if close else ""
    return f"{guess or ';'} allowed here: {', '.join(names)}"


def _field_names_at(model: type[BaseModel], loc: list[str | int]) -> list[str]:
    """Walk the model's annotations along ``loc`` to the model that owns the last key."""
    candidates: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for cand in candidates:
            for inner in _unwrap(cand):
                if isinstance(part, int):
                    if get_origin(inner) in (list, tuple):
                        nxt.extend(get_args(inner)[:1])
                elif isinstance(inner, type) and issubclass(inner, BaseModel):
                    field = inner.model_fields.get(part)
                    if field is not None:
                        nxt.append(field.annotation)
                elif get_origin(inner) is dict:
                    nxt.extend(get_args(inner)[1:2])
        candidates = nxt
    names: list[str] = []
    for cand in candidates:
        for inner in _unwrap(cand):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                names.extend(n for n in inner.model_fields if n not in names)
    return names


def _unwrap(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [x for arg in get_args(annotation) for x in _unwrap(arg)]
    return [annotation]


def environ() -> Mapping[str, str]:
    return os.environ
