"""YAML text for documents dominated by long integer lists (PyYAML costs ~5 us per scalar).

``dump_text(data)``: ``yaml.dump`` (block style, keys in order), where ``FlowList`` values are
flow sequences and ``Literal`` strings literal blocks; a ``FlowList`` of more than ``ROW``
integers (nested or not) is written directly as the same flow sequence (its JSON spelling),
one nested element -- or ``ROW`` numbers -- per line.

``load_text(text)`` equals ``yaml.safe_load(text)`` but reads those integer flow sequences
with ``json.loads`` first: a value that starts a line as ``key: [`` (outside any literal /
folded block) and whose lines up to the matching ``]`` hold only digits, ``-``, commas,
brackets and blanks is parsed as JSON (anything JSON rejects, e.g. ``+1`` or ``007``, is left
to YAML), replaced by a one-off placeholder for the YAML pass, then put back.
"""
from __future__ import annotations

import json
import re
import uuid

import yaml

ROW = 32
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT_TAG, _SEQ_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:seq"
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_LIST_START = re.compile(r"^(\s*(?:- )?[A-Za-z_][A-Za-z_0-9]*: )(\[[-0-9,\s\[\]]*)$")
_LIST_LINE = re.compile(r"[-0-9,\s\[\]]*")
_BLOCK_START = re.compile(r"^(\s*).*[:-] [|>][-+0-9]*\s*$")


class FlowList(list):
    """A list dumped as a flow sequence ``[a, b, ...]``."""


class Literal(str):
    """A string dumped as a literal block ``|``."""


class _Dumper(_BaseDumper):
    pass


_Dumper.add_representer(FlowList, lambda d, data: d.represent_sequence(_SEQ_TAG, data, flow_style=True))
_Dumper.add_representer(Literal, lambda d, data: d.represent_scalar(
    "tag:yaml.org,2002:str", str(data), style="|"))


def _int_count(values) -> int | None:
    """How many ints a (nested) list of ints holds; None if it holds anything else."""
    total = 0
    for v in values:
        count = _int_count(v) if isinstance(v, list) else (1 if type(v) is int else None)
        if count is None:
            return None
        total += count
    return total


def _int_list_text(values: list, indent: str) -> str:
    if values and isinstance(values[0], list):
        return "[" + (",\n" + indent).join(json.dumps(v) for v in values) + "]"
    rows = [", ".join(map(str, values[i:i + ROW])) for i in range(0, len(values), ROW)]
    return "[" + (",\n" + indent).join(rows) + "]"


def dump_text(data: dict) -> str:
    lists: list = []
    mark = f"__int_list_{uuid.uuid4().hex}_"

    def swap(value):
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, FlowList) and (_int_count(value) or 0) > ROW:
            lists.append(value)
            return f"{mark}{len(lists) - 1}"
        if isinstance(value, list) and not isinstance(value, FlowList):
            return [swap(v) for v in value]
        return value

    text = yaml.dump(swap(data), Dumper=_Dumper, sort_keys=False, width=120, default_flow_style=False)

    def fill(match: re.Match) -> str:
        return match.group(1) + _int_list_text(lists[int(match.group(3))], " " * (len(match.group(2)) + 4))
    return re.sub(rf"^((\s*)(?:- )?[A-Za-z_0-9]+: ){mark}(\d+)$", fill, text, flags=re.MULTILINE)


class _Loader(_BaseLoader):
    def resolve(self, kind, value, implicit):
        """Plain decimal ints resolve without PyYAML's per-scalar regex loop (same result)."""
        if kind is yaml.ScalarNode and implicit[0] and _DECIMAL.fullmatch(value):
            return _INT_TAG
        return super().resolve(kind, value, implicit)


def _construct_seq(loader: yaml.BaseLoader, node: yaml.SequenceNode) -> list:
    out = []
    for child in node.value:
        if isinstance(child, yaml.ScalarNode) and child.tag == _INT_TAG and _DECIMAL.fullmatch(child.value):
            out.append(int(child.value))
        elif isinstance(child, yaml.SequenceNode) and child.tag == _SEQ_TAG:
            out.append(_construct_seq(loader, child))
        else:
            out.append(loader.construct_object(child, deep=True))
    return out


_Loader.add_constructor(_SEQ_TAG, _construct_seq)


def _extract_int_lists(text: str, mark: str) -> tuple[str, list]:
    lines, out, lists = text.split("\n"), [], []
    block_indent, i = None, 0
    while i < len(lines):
        line = lines[i]
        if block_indent is not None:
            if not line.strip() or len(line) - len(line.lstrip()) > block_indent:
                out.append(line)
                i += 1
                continue
            block_indent = None
        block = _BLOCK_START.match(line)
        start = None if block else _LIST_START.match(line)
        if block:
            block_indent = len(block.group(1))
        elif start:
            span, j = [start.group(2)], i
            depth = span[0].count("[") - span[0].count("]")
            while depth > 0 and j + 1 < len(lines) and _LIST_LINE.fullmatch(lines[j + 1]):
                j += 1
                span.append(lines[j])
                depth += lines[j].count("[") - lines[j].count("]")
            try:
                value = json.loads("\n".join(span)) if depth == 0 else None
            except ValueError:
                value = None
            if isinstance(value, list):
                out.append(f"{start.group(1)}{mark}{len(lists)}")
                lists.append(value)
                i = j + 1
                continue
        out.append(line)
        i += 1
    return "\n".join(out), lists


def _put_back(value, mark: str, lists: list):
    if isinstance(value, dict):
        return {k: _put_back(v, mark, lists) for k, v in value.items()}
    if isinstance(value, list):
        return [_put_back(v, mark, lists) for v in value]
    if isinstance(value, str) and value.startswith(mark) and value[len(mark):].isdigit():
        return lists[int(value[len(mark):])]
    return value


def load_text(text: str):
    mark = f"__int_list_{uuid.uuid4().hex}_"
    rest, lists = _extract_int_lists(text, mark)
    return _put_back(yaml.load(rest, Loader=_Loader), mark, lists)
