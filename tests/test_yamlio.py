"""hub.yamlio: libyaml's parser gives the same documents and line numbers as the pure-Python one; errors keep
the pure parser's wording."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hub import yamlio
from hub.yamlio import ConfigError, LineDict, load_yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for pattern in ("mappings/**/*.yaml", "deid/**/*.yaml", "deploy/**/*.yaml", "recognition/**/*.yaml", "views/**/*.json")
                 for p in REPO.glob(pattern))


def _shape(node: object) -> object:
    if isinstance(node, LineDict):
        return [node.line, list(node.key_lines.items()), [(k, _shape(v)) for k, v in node.items()]]
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return node


def test_libyaml_is_used_when_pyyaml_has_it():
    assert yamlio._FastLoader.__mro__[1] is getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_file_loads_the_same_with_both_parsers(path):
    text = path.read_text(encoding="utf-8")
    assert _shape(yaml.load(text, Loader=yamlio._FastLoader)) == _shape(yaml.load(text, Loader=yamlio._Loader))  # noqa: S506


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("a: [1, 2", 1, "expected ',' or ']', but got '<stream end>'"),
    ("a: *nope", 1, "found undefined alias 'nope'"),
    ("key: value\n  bad indent: x", 2, "mapping values are not allowed here"),
    ("a: 1\nb:\n  c: 1\n  c: 2\n", 4, "duplicate key"),
])
def test_errors_name_file_line_and_the_pure_parsers_problem(tmp_path, text, line, problem):
    path = tmp_path / "region.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert (caught.value.file, caught.value.line, caught.value.problem) == (str(path), line, problem)
