"""DDPG agent options (PocketFlow's ``ddpg_*`` flags and defaults).

A learner that searches per-layer ratios or bit widths holds one as a nested field
(``ddpg: DdpgConfig = nested(DdpgConfig)``); its flags keep the ``ddpg_`` prefix whatever the
learner's (``FLAG_PREFIX``), so every learner shares them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from utils.config import check, option

NOISE_TYPES = ("param", "action")
NOISE_PRTLS = ("tdecy", "adapt")


@dataclass
class DdpgConfig:
    FLAG_PREFIX: ClassVar[str] = "ddpg"

    actor_hidden: int = option(64, "DDPG: hidden width of the actor (PocketFlow: "
                                   "ddpg_actor_width)")
    critic_hidden: int = option(64, "DDPG: hidden width of the critic (PocketFlow: "
                                    "ddpg_critic_width)")
    actor_depth: int = option(2, "DDPG: dense blocks (Linear, LayerNorm, ReLU) of the actor")
    critic_depth: int = option(2, "DDPG: dense blocks of the critic after the action joins")
    loss_w_dcy: float = option(0.0, "DDPG: L2 weight decay added to the actor's and critic's "
                                    "losses (coefficient x sum of squared weights / 2)")
    record_step: int = option(1, "DDPG: keep every n-th transition of a roll-out in the "
                                 "replay buffer (the terminal one always)")
    tau: float = option(0.01, "DDPG: soft update rate of the target networks")
    gamma: float = option(0.9, "DDPG: reward discount factor")
    lrn_rate: float = option(1e-3, "DDPG: Adam learning rate of the actor and critic")
    batch_size: int = option(64, "DDPG: transitions per gradient step")
    nb_train_iters: int = option(20, "DDPG: gradient steps per train() call (one call per "
                                     "roll-out; PocketFlow took one step per layer)")
    enbl_bsln_func: bool = option(True, "DDPG: subtract an EMA baseline from the rewards")
    bsln_decy_rate: float = option(0.95, "DDPG: baseline <- rate * baseline "
                                         "+ (1 - rate) * roll-out reward")
    noise_type: str = option("param", "DDPG: exploration noise on the actor's parameters "
                                      "or on its actions", choices=NOISE_TYPES)
    noise_prtl: str = option("tdecy", "DDPG: noise std protocol: geometric decay per "
                                      "roll-out, or adaptive (param noise only)",
                             choices=NOISE_PRTLS)
    noise_std_init: float = option(1.0, "DDPG: initial noise std (action noise: relative "
                                        "to a_max - a_min)")
    noise_std_finl: float = option(1e-5, "DDPG: final noise std of the tdecy protocol")
    noise_dst_finl: float = option(1e-2, "DDPG: adapt protocol: target mean |action "
                                         "change| of the perturbed actor, relative to "
                                         "a_max - a_min")
    noise_adpt_rat: float = option(1.03, "DDPG: adapt protocol: std is multiplied or "
                                         "divided by this after each gradient step")

    def __post_init__(self) -> None:
        for name in ("actor_hidden", "critic_hidden", "actor_depth", "critic_depth",
                     "record_step"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(self.loss_w_dcy >= 0, "loss_w_dcy", f"must be >= 0, got {self.loss_w_dcy}")
        check(0.0 < self.tau <= 1.0, "tau", f"must be in (0, 1], got {self.tau}")
        check(0.0 <= self.gamma <= 1.0, "gamma",
              f"must be in [0, 1], got {self.gamma}")
        check(self.lrn_rate > 0, "lrn_rate",
              f"must be positive, got {self.lrn_rate}")
        for name in ("batch_size", "nb_train_iters"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(0.0 <= self.bsln_decy_rate < 1.0, "bsln_decy_rate",
              f"must be in [0, 1), got {self.bsln_decy_rate}")
        check(self.noise_type in NOISE_TYPES, "noise_type",
              f"must be one of {list(NOISE_TYPES)}, got {self.noise_type!r}")
        check(self.noise_prtl in NOISE_PRTLS, "noise_prtl",
              f"must be one of {list(NOISE_PRTLS)}, got {self.noise_prtl!r}")
        check(self.noise_prtl == "tdecy" or self.noise_type == "param",
              "noise_prtl", "'adapt' needs --noise_type=param")
        check(self.noise_std_init > 0, "noise_std_init",
              f"must be positive, got {self.noise_std_init}")
        check(0.0 < self.noise_std_finl <= self.noise_std_init, "noise_std_finl",
              f"must be in (0, --noise_std_init={self.noise_std_init}], "
              f"got {self.noise_std_finl}")
        check(self.noise_dst_finl > 0, "noise_dst_finl",
              f"must be positive, got {self.noise_dst_finl}")
        check(self.noise_adpt_rat > 1.0, "noise_adpt_rat",
              f"must be > 1, got {self.noise_adpt_rat}")
