"""Weight initialisation shared by the built-in nets."""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Kaiming-normal (fan_out) convs, BN weight 1 / bias 0; with ``linear_std`` also
    Linear weights N(0, linear_std) and zero biases (otherwise PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
