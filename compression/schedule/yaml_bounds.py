"""Reading a YAML file nobody here wrote, with bounds: its size, its nesting, its node count,
and no aliases (``*name``: a few lines of nested aliases expand to billions of nodes, and
Distiller's files use none). ``compose(text, path)`` returns the root node like
``yaml.compose``; every refusal is a ``yaml.MarkedYAMLError`` at the offending place, so the
caller reports ``file:line:col``. ``check_size(path)`` refuses a file larger than
``max_bytes()`` (1 MB; ``PF_MAX_YAML_BYTES`` overrides) before it is read."""
from __future__ import annotations

import os

import yaml

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 200_000


def max_bytes() -> int:
    """The size a YAML file may have (``PF_MAX_YAML_BYTES`` in the environment overrides)."""
    value = os.environ.get("PF_MAX_YAML_BYTES", "")
    return int(value) if value.isdigit() else MAX_BYTES


def check_size(path: str) -> str | None:
    """Why ``path`` is too large to read, or None."""
    size, limit = os.path.getsize(path), max_bytes()
    if size > limit:
        return (f"{size:,} bytes, more than a policy file needs (at most {limit:,}; set "
                "PF_MAX_YAML_BYTES to read larger files)")
    return None


class _Bounded(yaml.SafeLoader):
    """SafeLoader's composer with no aliases, bounded depth and a bounded node count."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.depth, self.nodes = 0, 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} refused: aliases are not accepted in a policy "
                "file (they can expand without bound); write the value out", event.start_mark)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES:,} YAML nodes",
                                              event.start_mark)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def compose(text: str) -> yaml.Node | None:
    """The root node of ``text`` (None for an empty document), within the bounds."""
    loader = _Bounded(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()
