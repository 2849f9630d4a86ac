"""The options of a channel-count strategy (``compression.budget.strategy.plan_counts`` reads
them as they are). A channel learner nests a subclass whose ``protocol`` says how its
PocketFlow flag names the protocol (``learners.channel.options``); the fields become flags
under the learner's prefix (``--cpr_preserve_ratio``).
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.config import check, option

PROTOCOLS = ("auto", "uniform", "list", "netadapt")
BUDGETS = ("flops", "latency")
# the search's reward: held-out accuracy (loss as a tie-break), or AMC's
# -max(noise_tolerance, error) * log(FLOPs)
REWARD_POLICIES = ("accuracy", "flops")


@dataclass
class StrategyOptions:
    prune_list_file: str = option("./ratio.list", "list: fraction of input channels KEPT per "
                                                  "layer, one per line ('<ratio>' or "
                                                  "'<layer> <ratio>')")
    preserve_ratio: float = option(0.5, "fraction of the unpruned model's FLOPs (or, with "
                                        "budget_type=latency, of its measured CPU latency) kept "
                                        "by the uniform and searched protocols")
    budget_type: str = option("flops", "what the budget counts: exact FLOPs, or CPU latency "
                                       "measured at latency_batch (a per-module lookup table, "
                                       "then measurements of the thinned model)", choices=BUDGETS)
    min_preserve_ratio: float = option(0.0, "lowest fraction of channels a layer keeps under a "
                                            "budget; 0: AMC's 1.5 * log10(preserve_ratio + 1)")
    reward_policy: str = option("accuracy", "search: reward = held-out accuracy, or AMC's "
                                            "-max(tol, error) * log(FLOPs)",
                                choices=REWARD_POLICIES)
    noise_tolerance: float = option(0.15, "search, flops reward: error floor")
    nb_rlouts: int = option(200, "search: roll-outs of the DDPG search")
    nb_rlouts_min: int = option(50, "search: roll-outs that fill the replay buffer first")
    rl_nb_batches: int = option(4, "search: calibration batches of a roll-out's selection")
    rl_ft_steps: int = option(0, "search: Adam steps on a roll-out's thinned model")
    rl_lrn_rate: float = option(1e-3, "search: Adam rate of those steps")
    nb_iters_feval: int = option(10, "search: held-out batches of a roll-out's evaluation")
    nb_rerank: int = option(3, "search: best roll-outs re-scored, with the uniform strategy, on "
                               "twice the calibration batches after rerank_ft_steps of "
                               "fine-tuning; the best is kept (0: the search's best as is)")
    rerank_ft_steps: int = option(50, "Adam steps of a re-scored strategy")
    netadapt_steps: int = option(8, "netadapt: iterations to the budget, each asking for an "
                                    "equal share of the saving (more: finer, slower)")
    latency_batch: int = option(1, "latency budget: batch size timed")
    latency_threads: int = option(0, "latency budget: torch threads (0: as set)")
    latency_tolerance: float = option(0.05, "latency budget: measured ratio within this "
                                            "fraction of the budget")

    # what a preserve ratio of 0 means ("": 0 is refused)
    UNSET_PRESERVE = ""

    def __post_init__(self) -> None:
        if self.UNSET_PRESERVE and self.preserve_ratio == 0:
            check(self.budget_type == "flops", "preserve_ratio",
                  "a latency budget needs --preserve_ratio in (0, 1]")
        else:
            check(0 < self.preserve_ratio <= 1, "preserve_ratio",
                  f"must be in (0, 1]{' or 0' if self.UNSET_PRESERVE else ''}, "
                  f"got {self.preserve_ratio}")
        check(0 <= self.min_preserve_ratio <= 1, "min_preserve_ratio",
              f"must be in [0, 1], got {self.min_preserve_ratio}")
        for name in ("nb_rlouts", "nb_rlouts_min", "rl_nb_batches", "nb_iters_feval",
                     "latency_batch", "netadapt_steps"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        for name in ("rl_ft_steps", "nb_rerank", "rerank_ft_steps", "latency_threads"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(self.nb_rlouts_min <= self.nb_rlouts, "nb_rlouts_min",
              f"must be <= --nb_rlouts ({self.nb_rlouts})")
        check(0 < self.latency_tolerance < 1, "latency_tolerance", "must be in (0, 1)")

    @property
    def protocol(self) -> str:
        """``auto`` (the DDPG search), ``uniform``, ``list`` or ``netadapt``."""
        raise NotImplementedError
