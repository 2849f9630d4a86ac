"""BatchNorm statistics re-estimation after pruning or quantization.

Removing most of a layer's weights shrinks its outputs, so the running mean/variance the BN
layers learned on the full model no longer fit: a pruned ResNet-20 at 90 % sparsity drops to
chance accuracy, and recovers most of it after a few forward passes that re-estimate the
statistics (no weight changes). Search rewards use it to score candidates fairly and quickly.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable) -> int:
    """Reset every BN layer's running statistics and re-estimate them as the plain average
    over ``batches`` (``(inputs, labels)`` pairs or input tensors) in training mode; the
    model's mode is restored. Returns the number of BN layers updated."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)
