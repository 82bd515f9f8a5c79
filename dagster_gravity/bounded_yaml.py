"""YAML parsed with limits: nesting depth and the number of nodes after alias expansion.

`yaml.safe_load` recurses once per nesting level (5,000 levels raise RecursionError) and
lets an alias stand for a whole subtree, so a kilobyte "billion laughs" document stands for
10**9 values: harmless as a shared graph, fatal to anything that walks it. Here the
composer counts, for every node, how many nodes it stands for with aliases expanded, and
refuses a document over `max_nodes` (or nested deeper than `max_depth`, or with an alias
to a node that contains it) before any Python object is built. Pure Python: no Dagster.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml's parser (about 3x faster) where PyYAML was built with it
    from yaml.cyaml import CParser as _Parser

    def _init_parser(loader, stream):
        _Parser.__init__(loader, stream)

    _BASES: tuple = (_Parser,)
except ImportError:  # pragma: no cover - pure-Python PyYAML
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    def _init_parser(loader, stream):
        Reader.__init__(loader, stream)
        Scanner.__init__(loader)
        Parser.__init__(loader)

    _BASES = (Reader, Scanner, Parser)


class YamlLimitError(ValueError):
    """A document over one of the limits; the message says which and the limit."""


class _BoundedLoader(Composer, *_BASES, SafeConstructor, Resolver):  # Python composer first: it counts
    def __init__(self, stream: str, max_depth: int, max_nodes: int):
        _init_parser(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.max_depth, self.max_nodes = max_depth, max_nodes
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            anchor = self.peek_event().anchor
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:  # still being composed: the alias is inside its anchor
                raise YamlLimitError(f"the alias *{anchor[:40]} inside the node it refers to (a recursive document)")
            return node
        self._depth += 1
        if self._depth > self.max_depth:
            raise YamlLimitError(f"nesting deeper than {self.max_depth} levels (line {self.peek_event().start_mark.line + 1})")
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, SequenceNode):
            size = 1 + sum(self._sizes[id(child)] for child in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        else:
            size = 1
        if size > self.max_nodes:
            raise YamlLimitError(
                f"more than {self.max_nodes:,} values once aliases are expanded (line {node.start_mark.line + 1})"
            )
        self._sizes[id(node)] = size
        return node


def load(text: str, *, max_depth: int, max_nodes: int) -> Any:
    """The one YAML document in `text`, as `yaml.safe_load` would build it, or
    YamlLimitError / yaml.YAMLError."""
    loader = _BoundedLoader(text, max_depth, max_nodes)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
