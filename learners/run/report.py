"""The report of a run, typed: what ``report.json`` holds and the printed table shows.

``Report`` has the fixed part every learner fills the same way (accuracy, FLOPs, parameters,
bytes on disk and latency of the full and the compressed model, wall times) and ``sections``:
what a learner or the runner adds under its own key (``selection``, ``strategy``, ``search``,
``sparsity``, ``quantization``, ``kept_channels``, ``chain``, ``deploy``, ``onnx``, ``files``...),
in the order added. ``to_dict()`` gives the ``report.json`` keys; a value that was not
measured is ``None`` (null), never invented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sides:
    """A figure of the full (reference) model and of the compressed one."""

    full: Any = None
    compressed: Any = None

    def to_dict(self) -> dict:
        return {"full": self.full, "compressed": self.compressed}


@dataclass
class Accuracy:
    full: float | None = None
    compressed_before_finetune: float | None = None
    compressed: float | None = None
    extra: dict = field(default_factory=dict)   # a learner's intermediate figures ("gated")

    def to_dict(self) -> dict:
        return {"full": self.full, "compressed_before_finetune": self.compressed_before_finetune,
                "compressed": self.compressed, **self.extra}


@dataclass
class Report:
    learner: str
    model: str
    dataset: str
    accuracy: Accuracy = field(default_factory=Accuracy)
    flops: Sides = field(default_factory=Sides)
    params: Sides = field(default_factory=Sides)
    bytes_on_disk: Sides = field(default_factory=Sides)
    latency_ms: Sides = field(default_factory=Sides)
    wall_s: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        """A section of its own (``report.json`` key ``name``)."""
        if name in FIXED:
            raise ValueError(f"{name!r} is a fixed part of the report, not a section")
        self.sections[name] = value

    def get(self, name: str, default: Any = None) -> Any:
        return self.sections.get(name, default)

    def to_dict(self) -> dict:
        return {"learner": self.learner, "model": self.model, "dataset": self.dataset,
                "accuracy": self.accuracy.to_dict(), "flops": self.flops.to_dict(),
                "params": self.params.to_dict(), "bytes_on_disk": self.bytes_on_disk.to_dict(),
                "latency_ms": self.latency_ms.to_dict(),
                "wall_s": {k: round(v, 2) for k, v in self.wall_s.items()}, **self.sections}


FIXED = ("learner", "model", "dataset", "accuracy", "flops", "params", "bytes_on_disk",
         "latency_ms", "wall_s")
