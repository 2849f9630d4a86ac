"""Knowledge distillation as a loss term any learner can switch on (``--enbl_dst``).

PocketFlow's term: ``loss_w * CE(softmax(z_t / T), z_s / T)`` (no T^2 factor), i.e. the
cross-entropy of the student's tempered log-probabilities against the teacher's tempered
probabilities, averaged over the batch. The teacher may have any architecture; it only has
to map the same inputs to logits over the same classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.trainer import Callback, StepState, Trainer


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Mean over the batch of -sum_c softmax(z_t/T)_c * log_softmax(z_s/T)_c."""
    soft_targets = F.softmax(teacher_logits / temperature, dim=1)
    log_probs = F.log_softmax(student_logits / temperature, dim=1)
    return -(soft_targets * log_probs).sum(dim=1).mean()


class DistillationCallback(Callback):
    """Adds ``loss_w * distillation_loss`` to the step's loss, with a frozen teacher."""

    def __init__(self, teacher: nn.Module, loss_w: float, temperature: float) -> None:
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.loss_w = loss_w
        self.temperature = temperature

    def before_backward_pass(self, trainer: Trainer, state: StepState) -> None:
        with torch.no_grad():
            teacher_logits = self.teacher(state.inputs)
        if teacher_logits.shape != state.outputs.shape:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match the "
                             f"student's {tuple(state.outputs.shape)}: same classes needed")
        term = self.loss_w * distillation_loss(state.outputs, teacher_logits, self.temperature)
        state.metrics["loss_dst"] = term.detach()
        state.loss = state.loss + term
