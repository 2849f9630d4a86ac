"""The channel graph: channel ids merged by union-find, and who writes, follows and reads
them (see ``compression.graph`` for what the ids mean and how pruning uses them)."""
from __future__ import annotations

from typing import Collection, Mapping, Sequence

import torch


class ChannelGraph:
    """Channel ids merged by union-find, and who writes, follows and reads them."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed_ids: set[int] = set()
        self.input_ids: set[int] = set()
        self.writers: dict[str, list[int]] = {}        # module -> ids of its output channels
        self.followers: dict[str, list[int]] = {}      # channelwise module -> ids it sees
        # (a grouped conv: the ids it writes, each group's one root with its inputs')
        self.grouped: set[str] = set()                 # the grouped convs among the followers
        self.readers: dict[str, list[int]] = {}        # module -> ids its input actually has
        self.columns: dict[str, list[int]] = {}        # module -> input position of each column
        self.gathered: set[str] = set()                # readers that are Gather modules
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.kinds: dict[str, str] = {}
        self.gate_readers: set[str] = set()
        self.mixed_ids: set[int] = set()               # outputs of layers that mix channels
        self.private: dict[str, list[str]] = {}        # reader -> channelwise modules only it reads
        self.scatters: dict[str, tuple[list[int], list[int]]] = {}  # Scatter module -> (ids of
        # its wide output, where its own channels lie in it)
        self.input_shape: tuple[int, ...] | None = None
        self.unhandled: dict[str, str] = {}
        self.last_dim: set[str] = set()                # linear readers of a channels-last tensor
        self.params: dict[str, tuple[list[int], int]] = {}  # a per-channel parameter outside a
        # module (a layer scale ``x * self.gamma.view(1, -1, 1, 1)``) -> (ids, its channel dim)

    # -- union-find ------------------------------------------------------------------------
    def fresh(self, n: int, fixed: bool = False) -> list[int]:
        ids = list(range(len(self.parent), len(self.parent) + n))
        self.parent.extend(ids)
        if fixed:
            self.fixed_ids.update(ids)
        return ids

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: Sequence[int], b: Sequence[int]) -> None:
        for x, y in zip(a, b):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self, ids: Sequence[int]) -> list[int]:
        return [self.find(i) for i in ids]

    # -- derived facts ---------------------------------------------------------------------
    def fixed_roots(self) -> set[int]:
        return {self.find(i) for i in self.fixed_ids}

    def read_ids(self, name: str) -> list[int]:
        """The ids a reader's weight columns read (its gathered input for a Gather module)."""
        ids = self.readers[name]
        return [ids[p] for p in self.columns[name]]

    def voters(self) -> dict[int, set[str]]:
        """root -> the readers (gate readers excepted) that read it."""
        voters: dict[int, set[str]] = {}
        for name in self.readers:
            if name in self.gate_readers:
                continue
            for root in self.roots(self.read_ids(name)):
                voters.setdefault(root, set()).add(name)
        return voters

    def survivors(self, keep: Mapping[str, torch.Tensor], keep_shared: bool = False,
                  coupled: Collection[int] = ()) -> set[int]:
        """Roots that stay: fixed, kept by a reader (all its inputs when it is not in
        ``keep``), or read by no reader but a gate's; with ``keep_shared`` also every root
        several readers read (the architecture ``ChannelFlops.flops`` counts), except the
        ``coupled`` ones (residual groups, whose readers keep the same channels)."""
        alive = self.fixed_roots()
        voters = self.voters()
        coupled = {self.find(i) for i in coupled}
        alive.update(r for r in {self.find(i) for i in range(len(self.parent))}
                     if r not in voters
                     or keep_shared and len(voters[r]) > 1 and r not in coupled)
        for name in self.readers:
            if name in self.gate_readers:
                continue
            ids = self.read_ids(name)
            index = keep.get(name)
            positions = range(len(ids)) if index is None else torch.as_tensor(index).tolist()
            alive.update(self.find(ids[p]) for p in positions)
        for ids in self.writers.values():        # a layer keeps at least one output channel
            if ids and not any(self.find(i) in alive for i in ids):
                alive.add(self.find(ids[0]))
        return alive

    def plan(self, keep: Mapping[str, torch.Tensor], keep_shared: bool = False,
             coupled: Collection[int] = ()) -> dict[str, dict]:
        """``module -> change`` for every module that changes when each reader in ``keep``
        keeps those input columns: ``out`` (kept output channels of a writer), ``channels`` (of
        a follower), ``in`` (kept weight columns of a reader), ``gather`` (where they lie in
        the reader's new, narrower input; absent when it reads all of it) and, for a
        parameter outside a module (``params``), ``param`` (kept entries along ``dim``)."""
        alive = self.survivors(keep, keep_shared, coupled)
        plan: dict[str, dict] = {}

        def alive_positions(ids: Sequence[int]) -> list[int]:
            return [p for p, i in enumerate(ids) if self.find(i) in alive]

        for name, ids in self.writers.items():
            out = alive_positions(ids)
            if len(out) < len(ids):
                plan.setdefault(name, {})["out"] = torch.tensor(out, dtype=torch.long)
        for name, ids in self.followers.items():
            channels = alive_positions(ids)
            if len(channels) < len(ids):
                plan.setdefault(name, {})["channels"] = torch.tensor(channels, dtype=torch.long)
        for name, ids in self.readers.items():
            columns = self.columns[name]
            index = keep.get(name)
            if name in self.gate_readers or index is None:
                kept = [c for c, p in enumerate(columns) if self.find(ids[p]) in alive]
            else:
                kept = sorted(torch.as_tensor(index).tolist())
            now = alive_positions(ids)                      # the reader's new input channels
            rank = {p: r for r, p in enumerate(now)}
            gather = [rank[columns[c]] for c in kept]
            was_gather = name in self.gathered
            change = {}
            if len(kept) < len(columns):
                change["in"] = torch.tensor(kept, dtype=torch.long)
            if was_gather and gather == columns and len(now) == len(ids):
                pass                                        # the same pick of the same input
            elif gather != list(range(len(now))):
                change["gather"] = torch.tensor(gather, dtype=torch.long)
            elif was_gather:
                change["gather"] = None                     # reads all that is left: plain
            if change:
                plan.setdefault(name, {}).update(change)
        for name, (ids, dim) in self.params.items():
            channels = alive_positions(ids)
            if len(channels) < len(ids):
                plan[name] = {"param": torch.tensor(channels, dtype=torch.long), "dim": dim}
        for name, (wide, index) in self.scatters.items():
            now = alive_positions(wide)
            if len(now) == len(wide):
                continue
            rank = {p: r for r, p in enumerate(now)}
            placed = [rank[p] for p in index if p in rank]
            plan.setdefault(name, {})["scatter"] = (
                None if placed == list(range(len(now)))
                else (torch.tensor(placed, dtype=torch.long), len(now)))
        return plan

    def fractions(self, kept: Mapping[str, int]) -> dict[int, float]:
        """root -> expected fraction kept when each layer in ``kept`` keeps that many input
        channels: its share for channels one chosen reader alone reads, 1 otherwise (a
        channel several readers share may still survive through any of them)."""
        fixed = self.fixed_roots()
        out: dict[int, float] = {}
        for root, names in self.voters().items():
            if root in fixed or len(names) != 1:
                continue
            (name,) = names
            if name in kept:
                out[root] = kept[name] / len(self.columns[name])
        return out

    def expected(self, ids: Sequence[int], fractions: Mapping[int, float]) -> int:
        return round(sum(fractions.get(self.find(i), 1.0) for i in ids))
