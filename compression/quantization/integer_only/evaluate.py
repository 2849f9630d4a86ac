"""Parity of an integer program with its fake-quantized float reference, and accuracies.

``compare(program, batches, float_model=None)`` runs, on ``(images, labels)`` batches, the
integer program (``program.quantize_input`` then ``program.run``), the ``FakeQuantModel`` and
optionally the float model, and returns::

    {"nb_samples", "nb_elements",            # output elements compared (samples x logits)
     "within_one_lsb", "exact",              # fractions of elements with |q_int - q_fake| <= 1 / == 0
     "max_diff",                             # largest |q_int - q_fake| in codes (LSBs)
     "int_accuracy", "fake_accuracy", ["float_accuracy"]}   # top-1, fractions

Top-1 of the quantized models is the argmax of the output codes (first index on ties).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from compression.quantization.integer_only.fake_quant import FakeQuantModel
from compression.quantization.integer_only.program import IntegerProgram


def agreement(q_int: torch.Tensor, q_fake: torch.Tensor) -> dict:
    diff = (q_int.to(torch.int64) - q_fake.to(torch.int64)).abs()
    return {"nb_elements": diff.numel(), "within_one_lsb": float((diff <= 1).double().mean()),
            "exact": float((diff == 0).double().mean()), "max_diff": int(diff.max())}


@torch.no_grad()
def compare(program: IntegerProgram, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            float_model: nn.Module | None = None, fake: FakeQuantModel | None = None) -> dict:
    fake = fake if fake is not None else FakeQuantModel(program)
    q_ints, q_fakes, labels, float_hits = [], [], [], 0
    for images, target in batches:
        images = images.float().cpu()
        q_ints.append(program.run(program.quantize_input(images)))
        q_fakes.append(fake.codes(images))
        labels.append(target.cpu())
        if float_model is not None:
            float_hits += int((float_model(images).argmax(1) == labels[-1]).sum())
    if not labels:
        raise ValueError("compare needs at least one batch")
    q_int, q_fake, label = torch.cat(q_ints), torch.cat(q_fakes), torch.cat(labels)
    report = {"nb_samples": len(label), **agreement(q_int, q_fake),
              "int_accuracy": float((q_int.argmax(1) == label).double().mean()),
              "fake_accuracy": float((q_fake.argmax(1) == label).double().mean())}
    if float_model is not None:
        report["float_accuracy"] = float_hits / len(label)
    return report
