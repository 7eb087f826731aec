"""YAML loading that remembers line numbers, so configuration errors can name file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class LineDict(dict):
    """A dict from YAML that knows the line of itself and of each of its keys (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    pass


class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when PyYAML has it: ~9x faster
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise ConfigError(
                "", key_node.start_mark.line + 1, str(key), "duplicate key", "each key once"
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_FastLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class ConfigError(ValueError):
    """A problem in a configuration file, located by file, line and field."""

    def __init__(self, file: str, line: int, field: str, problem: str, expected: str = ""):
        self.file, self.line, self.field, self.problem, self.expected = (
            file, line, field, problem, expected,
        )
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else f"line {self.line}"
        text = f"{where} {self.field}: {self.problem}"
        return f"{text}; expected {self.expected}" if self.expected else text


def load_yaml(path: Path) -> Any:
    """Load a YAML file; syntax errors and duplicate keys become ConfigErrors naming the file."""
    text = path.read_text(encoding="utf-8")
    try:
        try:
            return yaml.load(text, Loader=_FastLoader)  # noqa: S506
        except yaml.MarkedYAMLError:  # the pure-Python parser's messages say more (and name an undefined alias)
            return yaml.load(text, Loader=_Loader)  # noqa: S506
    except ConfigError as exc:
        raise ConfigError(str(path), exc.line, exc.field, exc.problem, exc.expected) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError(str(path), line, "(syntax)", str(exc.problem), "valid YAML") from None
