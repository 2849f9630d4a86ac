"""The learner protocol: what a compression algorithm implements, and what it hands back.

A learner is constructed with its own options (an unprefixed config dataclass, or None) and a
``Context`` (``learners.run.context``: device, processes, data, the one training loop, the teacher,
the original model, rank-0 searches). ``compress(model, spec)`` gets the starting model (the
pre-trained full model, or the result of an earlier learner of a chain) and its architecture
spec, and returns a ``Result``: the compressed model, its spec and the typed facts of the report.
Everything else (starting models and chains, checkpoints, resume, evaluation, the artifact,
the report, exports and their checks) is the runner's (``learners.run.runner``).

To add a learner: subclass ``Learner``, give it a config dataclass, register both with
``@register_learner("my-learner", config=MyConfig, prefix="my")`` (its flags become
``--my_<field>``) and add its module to ``learners.registry.BUILTIN_MODULES`` (or import it
before the run). See ``docs/design.md``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

if TYPE_CHECKING:
    from learners.run.context import Context
    from learners.run.report import Report


@dataclass
class Result:
    """What ``Learner.compress`` returns.

    ``model``/``spec``: the result and its architecture spec (``spec=None``: the learner wrote
    its own artifact, e.g. an int8 program, ``model`` is the float model its figures count and
    ``accuracy`` says how the artifact scored). ``sections``: the learner's report sections
    (``selection``, ``sparsity``...), ``accuracy_extra``: its intermediate accuracies
    (``gated``). ``deploy_kind``: how the runner exports the result (``fp32``, ``fakequant``;
    None: not at all, ``deploy_reason`` says why). ``meta``: extra entries of the artifact's
    meta. Facts only one learner has (a smaller file, a runtime's latency, sparse copies) go
    into the report through ``Learner.finish``.
    """

    model: nn.Module
    spec: dict | None
    before_finetune: float | None = None
    sections: dict = field(default_factory=dict)
    accuracy_extra: dict = field(default_factory=dict)
    accuracy: float | None = None
    deploy_kind: str | None = "fp32"
    deploy_reason: str = ""
    meta: dict = field(default_factory=dict)


class Learner(ABC):
    """One compression algorithm over the shared runner."""

    learner_name: ClassVar[str] = "abstract"     # set by register_learner
    config_cls: ClassVar[type | None] = None
    flag_prefix: ClassVar[str] = ""
    # Chains (``learners.run.composition``): properties this learner's result has, and the
    # properties of a starting model it refuses (property -> why).
    produces: ClassVar[frozenset] = frozenset()
    refuses: ClassVar[dict] = {}
    export_kinds: ClassVar[tuple] = ("fp32",)    # what its result deploys as (uniform-tf: int8)
    from_scratch: ClassVar[bool] = False         # full-prec: trains the helper's model itself

    def __init__(self, cfg: Any, ctx: "Context") -> None:
        self.cfg = cfg
        self.ctx = ctx

    @abstractmethod
    def compress(self, model: nn.Module, spec: dict) -> Result:
        """Compress ``model`` (on the context's device; the learner may change it in place)."""

    def finish(self, result: Result, report: "Report") -> None:
        """This learner's own facts in the report, on the primary process after the artifact is
        written and before the runner's figures: a figure set here (``bytes_on_disk``,
        ``latency_ms`` of the compressed side) is kept, the runner measures the others."""

    def result_tags(self) -> frozenset:
        """The properties of this run's result (``produces``; a learner whose result depends on
        its options, e.g. a YAML policy, overrides this). Recorded in the chain."""
        return self.produces

    def resume_files(self) -> list[tuple[str, str]]:
        """``(path, kind)`` of the state files of its own that ``--resume`` continues from."""
        return []

    def load_result(self, path: str) -> nn.Module:
        """The saved result at ``path`` as a runnable module (``--exec_mode=eval``)."""
        from utils.checkpoint import CheckpointError
        from compression.artifacts import load_model

        model, saved = load_model(path, base=self.ctx.base)
        trained_on = saved.get("meta", {}).get("input_shape")
        shape = list(self.ctx.helper.input_shape)
        if trained_on is not None and list(trained_on) != shape:
            raise CheckpointError(
                f"{path} was trained on inputs of shape {list(trained_on)} but the helper now "
                f"feeds {shape}; pass the training run's data flags (e.g. --image_size) to "
                "evaluate it")
        return model
