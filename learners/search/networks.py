"""Actor and critic networks of the DDPG agent (PocketFlow's layouts) and target-net updates."""
from __future__ import annotations

import torch
from torch import nn


def dense_block(in_dim: int, width: int) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU."""
    return nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width), nn.ReLU())


def dense_stack(in_dim: int, width: int, depth: int) -> list[nn.Module]:
    """``depth`` dense blocks, the first from ``in_dim``."""
    return [dense_block(in_dim if i == 0 else width, width) for i in range(depth)]


class Actor(nn.Module):
    """state -> action in [a_min, a_max]: ``depth`` dense blocks (2), Linear, sigmoid scaled to
    the bounds."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int,
                 a_min: torch.Tensor, a_max: torch.Tensor, depth: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(*dense_stack(state_dim, hidden, depth),
                                  nn.Linear(hidden, action_dim))
        self.register_buffer("a_min", a_min.detach().clone().float())
        self.register_buffer("a_range", (a_max - a_min).detach().clone().float())

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(states)) * self.a_range + self.a_min


class Critic(nn.Module):
    """(state, action) -> Q: a dense block on the state, concat the action, ``depth`` dense
    blocks (2), Linear.

    The action enters rescaled to [0, 1] (PocketFlow's actions were in [0, 1] already), so that
    any action bounds meet the same critic.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden: int,
                 a_min: torch.Tensor, a_max: torch.Tensor, depth: int = 2) -> None:
        super().__init__()
        self.state_block = dense_block(state_dim, hidden)
        self.head = nn.Sequential(*dense_stack(hidden + action_dim, hidden, depth),
                                  nn.Linear(hidden, 1))
        self.register_buffer("a_min", a_min.detach().clone().float())
        self.register_buffer("a_range", (a_max - a_min).detach().clone().float())

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        actions = (actions - self.a_min) / self.a_range
        return self.head(torch.cat([self.state_block(states), actions], dim=1)).squeeze(1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source for parameters; buffers are copied."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
    for tgt, src in zip(target.buffers(), source.buffers()):
        tgt.copy_(src)
