"""The one YAML loader for what a user gives (params, `--set` values, instruments, import mappings, `.dvc`
files): safe types only, and bounded, so that a small file cannot expand without limit.

PyYAML shares an aliased node, but whoever walks the loaded data (pydantic, deepcopy, JSON) walks it as a
tree: nine nested levels of ten aliases each (a "billion laughs", 600 bytes) are 10^9 elements to them, and
merge keys (`<<: *a`) copy for real. While it composes the document the loader counts every node as the tree
it will be, an alias as the whole subtree it repeats, and refuses, at the place it got to, a document over
`MAX_NODES` nodes, `MAX_ALIASES` aliases or `MAX_DEPTH` levels, an alias inside the node it names (a
recursive structure), or a file over `MAX_BYTES`. Every refusal is one line naming the source and line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from care.errors import CareError

MAX_BYTES = 8 << 20
MAX_NODES = 100_000  # as expanded: a params file has a few hundred, an instrument a few thousand
MAX_ALIASES = 1_000
MAX_DEPTH = 100


class _Refused(yaml.YAMLError):
    def __init__(self, reason: str, mark: yaml.Mark | None):
        super().__init__(reason)
        self.reason, self.problem_mark = reason, mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts the document as expanded while composing it (see the module docstring)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nodes = 0
        self._aliases = 0
        self._depth = 0
        self._open: set[str] = set()  # anchors whose node is still being composed
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth) as expanded

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(nodes, depth) of a complete node as a tree; memoised, so each node is measured once."""
        known = self._measured.get(id(node))
        if known is None:
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            else:
                children = []
            sizes = [self._measure(child) for child in children]
            known = (1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0))
            self._measured[id(node)] = known
        return known

    def _charge(self, nodes: int, depth: int, mark: yaml.Mark) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _Refused(f"expands to more than {MAX_NODES} nodes (nested aliases?)", mark)
        if self._depth + depth > MAX_DEPTH:
            raise _Refused(f"is nested more than {MAX_DEPTH} levels deep", mark)

    def compose_node(self, parent, index):  # noqa: D102 - PyYAML's hook
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:  # else PyYAML refuses the unknown anchor
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _Refused(f"uses more than {MAX_ALIASES} aliases", event.start_mark)
                if event.anchor in self._open:
                    raise _Refused("has an alias inside the node it names (a recursive structure)", event.start_mark)
                self._charge(*self._measure(node), event.start_mark)
            return super().compose_node(parent, index)
        self._charge(1, 1, event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)


def load_yaml(text: str, source: str, what: str, error: type[CareError] = CareError, located: bool = True) -> Any:
    """The data of one YAML document, bounded; `error` (one line: `source[:line]: what ...`) otherwise.

    `what` names the document in messages ("instrument", "mapping"); `located=False` leaves the line out (a
    `--set` value has none)."""
    if len(text) > MAX_BYTES:
        raise error(f"{source}: {what} is over {MAX_BYTES >> 20} MiB")
    try:
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as exc:
        reason, mark = exc.reason, exc.problem_mark
    except yaml.YAMLError as exc:
        reason, mark = "is not valid YAML", getattr(exc, "problem_mark", None)
    except RecursionError:  # a guard: the depth bound comes first
        reason, mark = "is nested too deeply", None
    where = f":{mark.line + 1}" if located and mark is not None else ""
    raise error(f"{source}{where}: {what} {reason}") from None


def read_yaml_bytes(path: str | Path, what: str, error: type[CareError] = CareError) -> bytes:
    """The bytes of a regular YAML file (a FIFO is refused, never waited on), refused past MAX_BYTES."""
    path = Path(path)
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise error(f"{path}: the {what} is not a regular file")
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_BYTES:
        raise error(f"{path}: {what} is over {MAX_BYTES >> 20} MiB")
    return raw


def load_yaml_file(path: str | Path, what: str, error: type[CareError] = CareError) -> Any:
    """`load_yaml` of a UTF-8 file of at most MAX_BYTES."""
    raw = read_yaml_bytes(path, what, error)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 (byte offset {exc.start})") from None
    return load_yaml(text, str(path), what, error)
