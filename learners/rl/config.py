"""DDPG agent options (PocketFlow's ``ddpg_*`` flag names and defaults).

``DdpgConfig`` is meant to be a base class of the configs of learners that search per-layer
ratios with the agent (``class WsConfig(DdpgConfig)``): every field has a default, and
subclasses that define ``__post_init__`` call ``super().__post_init__()``.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.config import check, option

NOISE_TYPES = ("param", "action")
NOISE_PRTLS = ("tdecy", "adapt")


@dataclass
class DdpgConfig:
    ddpg_actor_hidden: int = option(64, "DDPG: hidden width of the actor and critic networks")
    ddpg_tau: float = option(0.01, "DDPG: soft update rate of the target networks")
    ddpg_gamma: float = option(0.9, "DDPG: reward discount factor")
    ddpg_lrn_rate: float = option(1e-3, "DDPG: Adam learning rate of the actor and critic")
    ddpg_batch_size: int = option(64, "DDPG: transitions per gradient step")
    ddpg_nb_train_iters: int = option(20, "DDPG: gradient steps per train() call (one call per "
                                          "roll-out; PocketFlow took one step per layer)")
    ddpg_enbl_bsln_func: bool = option(True, "DDPG: subtract an EMA baseline from the rewards")
    ddpg_bsln_decy_rate: float = option(0.95, "DDPG: baseline <- rate * baseline "
                                              "+ (1 - rate) * roll-out reward")
    ddpg_noise_type: str = option("param", "DDPG: exploration noise on the actor's parameters "
                                           "or on its actions", choices=NOISE_TYPES)
    ddpg_noise_prtl: str = option("tdecy", "DDPG: noise std protocol: geometric decay per "
                                           "roll-out, or adaptive (param noise only)",
                                  choices=NOISE_PRTLS)
    ddpg_noise_std_init: float = option(1.0, "DDPG: initial noise std (action noise: relative "
                                             "to a_max - a_min)")
    ddpg_noise_std_finl: float = option(1e-5, "DDPG: final noise std of the tdecy protocol")
    ddpg_noise_dst_finl: float = option(1e-2, "DDPG: adapt protocol: target mean |action "
                                              "change| of the perturbed actor, relative to "
                                              "a_max - a_min")
    ddpg_noise_adpt_rat: float = option(1.03, "DDPG: adapt protocol: std is multiplied or "
                                              "divided by this after each gradient step")

    def __post_init__(self) -> None:
        check(self.ddpg_actor_hidden > 0, "ddpg_actor_hidden",
              f"must be positive, got {self.ddpg_actor_hidden}")
        check(0.0 < self.ddpg_tau <= 1.0, "ddpg_tau", f"must be in (0, 1], got {self.ddpg_tau}")
        check(0.0 <= self.ddpg_gamma <= 1.0, "ddpg_gamma",
              f"must be in [0, 1], got {self.ddpg_gamma}")
        check(self.ddpg_lrn_rate > 0, "ddpg_lrn_rate",
              f"must be positive, got {self.ddpg_lrn_rate}")
        for name in ("ddpg_batch_size", "ddpg_nb_train_iters"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(0.0 <= self.ddpg_bsln_decy_rate < 1.0, "ddpg_bsln_decy_rate",
              f"must be in [0, 1), got {self.ddpg_bsln_decy_rate}")
        check(self.ddpg_noise_type in NOISE_TYPES, "ddpg_noise_type",
              f"must be one of {list(NOISE_TYPES)}, got {self.ddpg_noise_type!r}")
        check(self.ddpg_noise_prtl in NOISE_PRTLS, "ddpg_noise_prtl",
              f"must be one of {list(NOISE_PRTLS)}, got {self.ddpg_noise_prtl!r}")
        check(self.ddpg_noise_prtl == "tdecy" or self.ddpg_noise_type == "param",
              "ddpg_noise_prtl", "'adapt' needs --ddpg_noise_type=param")
        check(self.ddpg_noise_std_init > 0, "ddpg_noise_std_init",
              f"must be positive, got {self.ddpg_noise_std_init}")
        check(0.0 < self.ddpg_noise_std_finl <= self.ddpg_noise_std_init, "ddpg_noise_std_finl",
              f"must be in (0, ddpg_noise_std_init={self.ddpg_noise_std_init}], "
              f"got {self.ddpg_noise_std_finl}")
        check(self.ddpg_noise_dst_finl > 0, "ddpg_noise_dst_finl",
              f"must be positive, got {self.ddpg_noise_dst_finl}")
        check(self.ddpg_noise_adpt_rat > 1.0, "ddpg_noise_adpt_rat",
              f"must be > 1, got {self.ddpg_noise_adpt_rat}")
