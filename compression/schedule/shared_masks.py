"""Layers that more than one pruner masks.

Distiller's published files put a fine-grained AGP pruner on a conv whose input channels a
filter pruner removes, or prune the filters of a conv whose inputs another pruner removes
(``resnet20_filters.schedule_agp_3/_4``). Each pruner's event computes the whole mask of its
layers; here each one's mask is kept as its part, and the layer's mask is the product of the
parts, so no event undoes another pruner's zeros. A reader's kept input columns (for thinning)
are the intersection of what each pruner keeps. Parts are saved with the scheduler's state
(``--resume``); a part whose shape no longer fits (the layer was thinned) is dropped.
"""
from __future__ import annotations

import torch


class SharedMasks:
    def __init__(self, owners: dict[str, list[str]]) -> None:
        """``owners``: layer -> the names of the pruners that mask it (only layers with 2+)."""
        self.owners = owners
        self.parts: dict[str, dict[str, torch.Tensor]] = {}
        self.keep_parts: dict[str, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def after(self, owner: str, layers, masks: dict, keep: dict, keep_before: dict) -> None:
        """Combine what pruner ``owner``'s event just wrote with the other pruners' parts."""
        for name in layers:
            if name not in self.owners:
                continue
            mask = masks[name].mask
            parts = {o: p for o, p in self.parts.get(name, {}).items() if p.shape == mask.shape}
            parts[owner] = mask.detach().clone()
            self.parts[name] = parts
            combined = torch.ones_like(mask)
            for part in parts.values():
                combined.mul_(part.to(mask.device))
            mask.copy_(combined)
        for reader, kept in keep.items():
            if keep_before.get(reader) is kept:
                continue                                    # not written by this event
            parts = self.keep_parts.setdefault(reader, {})
            parts[owner] = kept
            if len(parts) > 1:
                common = set.intersection(*(set(p.tolist()) for p in parts.values()))
                keep[reader] = torch.tensor(sorted(common), dtype=torch.long)

    def state_dict(self) -> dict:
        return {"parts": {n: {o: p.cpu() for o, p in d.items()} for n, d in self.parts.items()},
                "keep_parts": {n: {o: p.tolist() for o, p in d.items()}
                               for n, d in self.keep_parts.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.parts = {n: dict(d) for n, d in state.get("parts", {}).items()}
        self.keep_parts = {n: {o: torch.tensor(p, dtype=torch.long) for o, p in d.items()}
                           for n, d in state.get("keep_parts", {}).items()}
