"""The per-layer ratio options of a channel learner, defined once for every flag prefix.

``strategy_options("cpr", ...)`` returns a dataclass mixin with ``cpr_prune_ratio_prtl``,
``cpr_preserve_ratio``, ``cpr_budget_type``, ``cpr_nb_rlouts``, ... and two methods:
``check_strategy()`` (call it from ``__post_init__``) and ``strategy_settings(**fixed)``
(a ``learners.channel_strategy.StrategySettings``). ``channel`` keeps PocketFlow's
``cp_prune_option auto|uniform|list``; ``chn-pruned-rmt`` and ``dis-chn-pruned``, whose
PocketFlow flags are per-layer pruning ratios, follow ``weight-sparse``'s
``*_prune_ratio_prtl uniform|list|optimal``.
"""
from __future__ import annotations

import dataclasses

from learners.channel_strategy import BUDGETS, StrategySettings
from learners.rl.channel_env import REWARD_POLICIES
from utils.config import check, option

# protocol name in the flag -> StrategySettings.protocol
SEARCH_NAMES = {"auto": "auto", "optimal": "auto"}


def strategy_options(prefix: str, protocol_flag: str, search_name: str, default_protocol: str,
                     preserve_default: float, unset_preserve: str = "",
                     list_default: str = "./ratio.list", nb_rlouts: int = 200,
                     nb_rlouts_min: int = 50) -> type:
    """The mixin for ``prefix``. ``unset_preserve``: what a preserve ratio of 0 means (empty: 0
    is refused)."""
    protocols = (search_name, "uniform", "list")
    p = prefix
    budget_help = ("fraction of the unpruned model's FLOPs (or, with "
                   f"{p}_budget_type=latency, of its measured CPU latency) kept by the uniform "
                   f"and {search_name} protocols")
    if unset_preserve:
        budget_help += f"; 0: {unset_preserve}"
    fields = [
        (f"{p}_{protocol_flag}", str, option(
            default_protocol, f"per-layer kept channels: {search_name} (DDPG search under the "
            f"budget {p}_preserve_ratio), uniform (the same fraction everywhere, matched to the "
            f"budget), list ({p}_prune_list_file)", choices=protocols)),
        (f"{p}_prune_list_file", str, option(
            list_default, "list: fraction of input channels KEPT per layer, one per line "
            "('<ratio>' or '<layer> <ratio>')")),
        (f"{p}_preserve_ratio", float, option(preserve_default, budget_help)),
        (f"{p}_budget_type", str, option(
            "flops", "what the budget counts: exact FLOPs, or CPU latency measured at "
            f"{p}_latency_batch (a per-module lookup table, then measurements of the thinned "
            "model)", choices=BUDGETS)),
        (f"{p}_min_preserve_ratio", float, option(
            0.0, "lowest fraction of channels a layer keeps under a budget; 0: AMC's "
            f"1.5 * log10({p}_preserve_ratio + 1)")),
        (f"{p}_reward_policy", str, option(
            "accuracy", f"{search_name}: reward = held-out accuracy, or AMC's "
            "-max(tol, error) * log(FLOPs)", choices=REWARD_POLICIES)),
        (f"{p}_noise_tolerance", float, option(0.15, f"{search_name}, flops reward: error floor")),
        (f"{p}_nb_rlouts", int, option(nb_rlouts, f"{search_name}: roll-outs of the DDPG search")),
        (f"{p}_nb_rlouts_min", int, option(
            nb_rlouts_min, f"{search_name}: roll-outs that fill the replay buffer first")),
        (f"{p}_rl_nb_batches", int, option(
            4, f"{search_name}: calibration batches of a roll-out's selection")),
        (f"{p}_rl_ft_steps", int, option(0, f"{search_name}: Adam steps on a roll-out's "
                                            "thinned model")),
        (f"{p}_rl_lrn_rate", float, option(1e-3, f"{search_name}: Adam rate of those steps")),
        (f"{p}_nb_iters_feval", int, option(
            10, f"{search_name}: held-out batches of a roll-out's evaluation")),
        (f"{p}_nb_rerank", int, option(
            3, f"{search_name}: best roll-outs re-scored, with the uniform strategy, on twice the "
            f"calibration batches after {p}_rerank_ft_steps of fine-tuning; the best is kept "
            "(0: the search's best as is)")),
        (f"{p}_rerank_ft_steps", int, option(50, "Adam steps of a re-scored strategy")),
        (f"{p}_latency_batch", int, option(1, "latency budget: batch size timed")),
        (f"{p}_latency_threads", int, option(0, "latency budget: torch threads (0: as set)")),
        (f"{p}_latency_tolerance", float, option(
            0.05, "latency budget: measured ratio within this fraction of the budget")),
    ]

    def value(self, name: str):
        return getattr(self, f"{p}_{name}")

    def check_strategy(self) -> None:
        preserve = value(self, "preserve_ratio")
        if unset_preserve and preserve == 0:
            check(value(self, "budget_type") == "flops", f"{p}_preserve_ratio",
                  f"a latency budget needs {p}_preserve_ratio in (0, 1]")
        else:
            check(0 < preserve <= 1, f"{p}_preserve_ratio",
                  f"must be in (0, 1]{' or 0' if unset_preserve else ''}, got {preserve}")
        check(0 <= value(self, "min_preserve_ratio") <= 1, f"{p}_min_preserve_ratio",
              f"must be in [0, 1], got {value(self, 'min_preserve_ratio')}")
        for name in ("nb_rlouts", "nb_rlouts_min", "rl_nb_batches", "nb_iters_feval",
                     "latency_batch"):
            check(value(self, name) > 0, f"{p}_{name}", f"must be positive, got {value(self, name)}")
        for name in ("rl_ft_steps", "nb_rerank", "rerank_ft_steps", "latency_threads"):
            check(value(self, name) >= 0, f"{p}_{name}", f"must be >= 0, got {value(self, name)}")
        check(value(self, "nb_rlouts_min") <= value(self, "nb_rlouts"), f"{p}_nb_rlouts_min",
              f"must be <= {p}_nb_rlouts ({value(self, 'nb_rlouts')})")
        check(0 < value(self, "latency_tolerance") < 1, f"{p}_latency_tolerance",
              "must be in (0, 1)")

    def strategy_settings(self, **fixed) -> StrategySettings:
        """The settings these options give; ``fixed`` sets the learner's own fields
        (``multiple``, ``uniform_ratio``, ``uniform_counts``, ``preserve_ratio``)."""
        protocol = value(self, protocol_flag)
        names = ("preserve_ratio", "reward_policy", "noise_tolerance", "nb_rlouts",
                 "nb_rlouts_min", "rl_nb_batches", "rl_ft_steps", "rl_lrn_rate",
                 "nb_iters_feval", "nb_rerank", "rerank_ft_steps", "latency_batch",
                 "latency_threads", "latency_tolerance")
        return StrategySettings(**{
            "protocol": SEARCH_NAMES.get(protocol, protocol), "budget": value(self, "budget_type"),
            "list_file": value(self, "prune_list_file"),
            "min_ratio": value(self, "min_preserve_ratio") or None,
            **{name: value(self, name) for name in names}, **fixed})

    return dataclasses.make_dataclass(
        f"{prefix.capitalize()}StrategyOptions", fields,
        namespace={"check_strategy": check_strategy, "strategy_settings": strategy_settings})


def prune_ratio_options(prefix: str) -> type:
    """The options of a learner whose PocketFlow flag is ``<prefix>_prune_ratio`` (a fraction
    of every layer's inputs removed): ``<prefix>_prune_ratio_prtl uniform|list|optimal``, no
    budget by default (PocketFlow's counts)."""
    return strategy_options(
        prefix, "prune_ratio_prtl", "optimal", "uniform", 0.0,
        unset_preserve=f"uniform removes {prefix}_prune_ratio of every layer's inputs and "
        "optimal searches at that strategy's FLOPs", list_default=f"./{prefix}_ratio.list",
        nb_rlouts=100, nb_rlouts_min=30)
