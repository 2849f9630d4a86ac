"""Options of ``gate-decorator`` (named after the authors' ``gbn`` config keys where one
exists: sparse_lambda, flops_eta, lr_min, lr_max, tock_epoch, T, p)."""
from __future__ import annotations

from dataclasses import dataclass

from learners.config import OutputOptions
from utils.config import check, check_ratio, option, split_names


@dataclass
class GateDecoratorConfig(OutputOptions):
    preserve_ratio: float = option(0.5, "fraction of the FLOPs the pruned model keeps")
    p: float = option(0.02, "fraction of all gated channels closed per tick (the authors' p)")
    t: int = option(10, "ticks between two tocks (the authors' T)")
    tock_epoch: float = option(1.0, "epochs of each tock: the whole net fine-tuned with the "
                                    "L1 penalty on gates (the authors' tock_epoch)")
    sparse_lambda: float = option(1e-3, "weight of the L1 penalty on gates during tocks")
    flops_eta: float = option(0.0, "FLOPs-aware ranking: importance minus eta x the "
                                   "relative FLOPs of one channel of the layer")
    tick_nb_batches: int = option(10, "training batches of each tick (gates trained alone, "
                                      "Taylor importance accumulated)")
    tick_lrn_rate: float = option(1e-3, "SGD rate of the gates during a tick")
    lrn_rate_tock: float = option(1e-3, "SGD rate of the tocks")
    lr_min: float = option(1e-3, "fine-tuning: triangular schedule from lr_min ...")
    lr_max: float = option(1e-2, "... up to lr_max at mid-run and back; the fine-tuning "
                                 "runs the helper's epochs x nb_epochs_rat")
    minimal_ratio: float = option(0.1, "fraction of each gated layer's channels always kept")
    skip_op_names: str = option("", "comma-separated substrings of layer names not to prune")

    def __post_init__(self) -> None:
        check_ratio(self.preserve_ratio, "preserve_ratio", low_inclusive=False,
                    high_inclusive=True)
        check(0 < self.p <= 1, "p", f"must be in (0, 1], got {self.p}")
        check(self.t >= 1, "t", f"must be >= 1, got {self.t}")
        check(self.tock_epoch >= 0, "tock_epoch", "must be >= 0")
        check(self.sparse_lambda >= 0, "sparse_lambda", "must be >= 0")
        check(self.tick_nb_batches >= 1, "tick_nb_batches", "must be >= 1")
        check(0 <= self.minimal_ratio < 1, "minimal_ratio", "must be in [0, 1)")
        for name in ("tick_lrn_rate", "lrn_rate_tock", "lr_min", "lr_max"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(self.lr_min <= self.lr_max, "lr_min",
              f"must be <= --lr_max ({self.lr_max}), got {self.lr_min}")

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.skip_op_names)
