"""full-prec: train the full-precision model with the helper's schedule (optionally distilled)."""
from __future__ import annotations

from torch import nn

from learners.base import Learner, Result
from learners.registry import register_learner


@register_learner("full-prec")
class FullPrecLearner(Learner):
    """Momentum SGD + weight decay over the helper's LR schedule. The runner starts it from the
    helper's model (or a warm start) and saves the result as the full model."""

    from_scratch = True

    def compress(self, model: nn.Module, spec: dict) -> Result:
        ctx = self.ctx
        ctx.fit(model, ctx.helper.lr_schedule(ctx.mgw.size()), tag="train", spec=spec,
                teacher=ctx.teacher())
        return Result(model, spec)
