"""Load gateway.yaml into `GatewayConfig`, reporting errors as ``file:line: key.path: problem``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from meshgate.config.models import GatewayConfig, reference_errors, route_warnings

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


class ConfigError(Exception):
    """The config is invalid; ``problems`` lists every error found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def key_path(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


class LocatedDocument:
    """YAML data plus the line of every key path in it."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.lines: dict[Loc, int] = {}
        self._scalars = yaml.SafeLoader("")
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([ConfigProblem(filename, line, "(yaml)", problem)]) from None
        self.data: Any = {} if node is None else self._build(node, ())

    def _fail(self, node: yaml.Node, loc: Loc, message: str) -> ConfigError:
        line = node.start_mark.line + 1
        return ConfigError([ConfigProblem(self.filename, line, key_path(loc), message)])

    def _build(self, node: yaml.Node, loc: Loc, own: bool = True) -> Any:
        """Python data of ``node``, noting each key path's line.

        ``own=False`` (values merged in by ``<<``) only fills lines not set by
        the mapping's own keys, so errors point where a value is written.
        """
        if own:
            self.lines[loc] = node.start_mark.line + 1
        else:
            self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            merged: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`
                    sources = (
                        value_node.value
                        if isinstance(value_node, yaml.SequenceNode)
                        else [value_node]
                    )
                    for source in sources:
                        if not isinstance(source, yaml.MappingNode):
                            raise self._fail(source, loc, "'<<' must merge a mapping")
                        for k, v in self._build(source, loc, own=False).items():
                            merged.setdefault(k, v)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._fail(key_node, loc, "keys must be plain names")
                key = str(key_node.value)  # config keys are names: `1` and `true` stay text
                child = (*loc, key)
                if key in out:
                    raise self._fail(key_node, child, "duplicate key")
                out[key] = self._build(value_node, child, own)
                if own:
                    self.lines[child] = key_node.start_mark.line + 1
                else:
                    self.lines.setdefault(child, key_node.start_mark.line + 1)
            for k, v in merged.items():
                out.setdefault(k, v)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(item, (*loc, i), own) for i, item in enumerate(node.value)]
        try:
            return self._scalars.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise self._fail(node, loc, f"invalid value: {problem}") from None

    def line_of(self, loc: Loc) -> int:
        """The line of the deepest known key on ``loc``."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 1

    def problem(self, loc: Loc, message: str) -> ConfigProblem:
        return ConfigProblem(self.filename, self.line_of(loc), key_path(loc), message)


def _pydantic_problems(doc: LocatedDocument, exc: ValidationError) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append(doc.problem(loc, message))
    return problems


def parse_model(model: type[M], text: str, filename: str) -> M:
    """Validate YAML ``text`` as ``model``; raise `ConfigError` listing every problem
    as ``file:line: key.path: problem`` (cp.yaml, sidecar.yaml)."""
    doc = LocatedDocument(text, filename)
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.problem((), "the top level must be a mapping of keys")])
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(doc, exc)) from None


def read_model(model: type[M], path: str | Path) -> M:
    """`parse_model` of the file at ``path`` (an unreadable file is a `ConfigError`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(p), 0, "(file)", exc.strerror or str(exc))]) from None
    return parse_model(model, text, str(p))


def parse_config(text: str, filename: str = "<config>") -> tuple[GatewayConfig, LocatedDocument]:
    """Validate YAML text; raise `ConfigError` listing every problem."""
    doc = LocatedDocument(text, filename)
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.problem((), "the top level must be a mapping of keys")])
    try:
        config = GatewayConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(doc, exc)) from None
    problems = [doc.problem(loc, msg) for loc, msg in reference_errors(config)]
    if problems:
        raise ConfigError(problems)
    return config, doc


def config_warnings(config: GatewayConfig, doc: LocatedDocument | None) -> list[ConfigProblem]:
    """Things that are valid but almost certainly wrong (a route that never matches)."""
    out = []
    for loc, msg in route_warnings(config):
        text = f"warning: {msg}"
        if doc is not None:
            out.append(doc.problem(loc, text))
        else:
            out.append(ConfigProblem("<config>", 0, key_path(loc), text))
    return out


def load_config(path: str | Path) -> tuple[GatewayConfig, LocatedDocument]:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(p), 0, "(file)", exc.strerror or str(exc))]) from None
    return parse_config(text, str(p))


def json_schema() -> str:
    """JSON Schema of gateway.yaml, for editor completion."""
    schema = GatewayConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "meshgate gateway.yaml"
    return json.dumps(schema, indent=2)
