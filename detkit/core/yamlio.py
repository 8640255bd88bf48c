"""Every YAML detkit reads: the safe loader, a duplicate key (PyYAML keeps the last) an error."""

from __future__ import annotations

from typing import IO, Any

import yaml


class YamlError(ValueError):
    """A YAML document that cannot be read: ``where`` (file and line) ``: problem``."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated within one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<:" merges may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                problem = f"duplicate key {key!r} (first at line {first})"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(stream: str | bytes | IO[str], source: str = "<string>") -> Any:
    """Parse one YAML document (None when empty) with the safe loader, refusing duplicate keys;
    raise :class:`YamlError` naming ``source`` (the file) for malformed YAML, a duplicate key or a
    tag the safe loader refuses.

    Example:
        >>> load_yaml("a: 1\\nb: 2\\na: 3\\n", "x.yaml")
        Traceback (most recent call last):
        ...
        detkit.core.yamlio.YamlError: x.yaml line 3: duplicate key 'a' (first at line 1)
    """
    try:
        return yaml.load(stream, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise YamlError(f"{source}{where}", getattr(e, "problem", None) or str(e)) from None
