"""Exploration noise of the DDPG agent: parameter or action noise, and its std schedule.

* action noise: Gaussian of std ``std * (a_max - a_min)`` added to the actor's action, clipped
  to the bounds.
* parameter noise: actions of a copy of the actor whose Linear weights and biases (not the
  LayerNorm affines, as in PocketFlow) carry Gaussian noise of std ``std``; the copy is
  re-drawn from the current actor at the start of every roll-out.
* 'tdecy': the buffer-filling roll-outs use ``std_init``; afterwards the std decays
  geometrically per roll-out, from exactly ``std_init`` on the first roll-out after the warm-up
  to exactly ``std_finl`` on the last of the ``nb_rlouts`` roll-outs (and stays there).
* 'adapt' (Plappert et al. 2018): at every gradient step a second perturbed copy is drawn and
  the std is divided (multiplied) by ``adpt_rat`` when the mean |action change|, relative to
  ``a_max - a_min``, is above (not above) ``dst_finl``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from learners.search.config import DdpgConfig
from learners.search.networks import Actor


@torch.no_grad()
def perturb_actor(noisy: Actor, actor: Actor, std: float, generator: torch.Generator) -> None:
    """noisy <- actor + N(0, std^2) on the weights and biases of its Linear layers."""
    noisy.load_state_dict(actor.state_dict())
    for module in noisy.modules():
        if isinstance(module, nn.Linear):
            for param in module.parameters():
                noise = torch.randn(param.shape, generator=generator).to(param.device)
                param.add_(noise, alpha=std)


def add_action_noise(actions: torch.Tensor, std: float, a_min: torch.Tensor,
                     a_range: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """actions + N(0, (std * range)^2), clipped to [a_min, a_min + range]."""
    noise = torch.randn(actions.shape, generator=generator).to(actions.device)
    return torch.clamp(actions + noise * (std * a_range), a_min, a_min + a_range)


class ExplorationNoise:
    """Noisy actions for exploration, and the std schedule of the chosen protocol."""

    def __init__(self, cfg: DdpgConfig, actor: Actor, nb_rlouts: int,
                 generator: torch.Generator) -> None:
        self.cfg, self.nb_rlouts, self.generator = cfg, nb_rlouts, generator
        self.std = cfg.noise_std_init
        self.warm_rlouts: int | None = None  # roll-outs done when the buffer became full
        self.pending = True  # re-draw the perturbed actor before the next noisy action
        param = cfg.noise_type == "param"
        self.noisy = copy.deepcopy(actor).requires_grad_(False) if param else None
        self.probe = copy.deepcopy(self.noisy) if cfg.noise_prtl == "adapt" else None

    def actions(self, actor: Actor, states: torch.Tensor) -> torch.Tensor:
        """Exploratory actions of ``actor`` for a batch of states."""
        if self.noisy is None:
            return add_action_noise(actor(states), self.std, actor.a_min, actor.a_range,
                                    self.generator)
        if self.pending:
            perturb_actor(self.noisy, actor, self.std, self.generator)
            self.pending = False
        return self.noisy(states)

    def tdecy_std(self, nb_done: int) -> float:
        """std of the roll-out that follows ``nb_done`` finished ones (tdecy protocol)."""
        init, finl = self.cfg.noise_std_init, self.cfg.noise_std_finl
        if self.warm_rlouts is None:
            return init
        span = self.nb_rlouts - 1 - self.warm_rlouts
        frac = 1.0 if span <= 0 else min(max((nb_done - self.warm_rlouts) / span, 0.0), 1.0)
        return init ** (1.0 - frac) * finl ** frac

    def end_rollout(self, nb_done: int, buffer_ready: bool) -> None:
        """A roll-out ended (``nb_done`` in all): schedule the next one's std and perturbation."""
        if buffer_ready and self.warm_rlouts is None:
            self.warm_rlouts = nb_done
        if self.cfg.noise_prtl == "tdecy":
            self.std = self.tdecy_std(nb_done)
        self.pending = True

    @torch.no_grad()
    def adapt(self, actor: Actor, states: torch.Tensor) -> None:
        """One step of the adaptive protocol on a batch of states (no-op for 'tdecy')."""
        if self.probe is None:
            return
        perturb_actor(self.probe, actor, self.std, self.generator)
        dist = ((actor(states) - self.probe(states)).abs() / actor.a_range).mean().item()
        rate = self.cfg.noise_adpt_rat
        self.std = self.std / rate if dist > self.cfg.noise_dst_finl else self.std * rate

    def state_dict(self) -> dict:
        warm = -1 if self.warm_rlouts is None else self.warm_rlouts
        return {"std": self.std, "warm_rlouts": warm, "pending": self.pending,
                "noisy": {} if self.noisy is None else self.noisy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.std, self.pending = float(state["std"]), bool(state["pending"])
        self.warm_rlouts = None if state["warm_rlouts"] < 0 else int(state["warm_rlouts"])
        if self.noisy is not None:
            self.noisy.load_state_dict(state["noisy"])
