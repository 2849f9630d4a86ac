"""Options of the schedule learner (``--compress=policy.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass

from learners.config import OutputOptions
from utils.config import check, option


@dataclass
class ScheduleConfig(OutputOptions):
    compress: str = option("", "schedule: Distiller-style compression-schedule YAML (pruners, "
                               "regularizers, quantizers, lr_schedulers, extensions, policies)",
                           flag="compress")
    nb_epochs: int = option(0, "schedule: training epochs (0: the policy's last epoch + 1)")
    epoch_iters: int = option(0, "schedule: optimizer steps per policy epoch (0: one pass over "
                                 "the training set)")
    ending_epoch: str = option("exclusive", "schedule: how a policy's ending_epoch is read: exclusive "
                                            "(Distiller's: active at range(start, end, frequency); LR "
                                            "schedulers stepped at the end of their epochs) or "
                                            "inclusive (this project's files before Distiller "
                                            "compatibility: the end epoch is active too)",
                               choices=["exclusive", "inclusive"])
    lrn_rate: float = option(0.0, "schedule: base learning rate of the policy's lr_schedulers "
                                  "(0: the helper's initial rate, scaled by the global batch)")

    def __post_init__(self) -> None:
        check(self.nb_epochs >= 0, "nb_epochs", f"must be >= 0, got {self.nb_epochs}")
        check(self.epoch_iters >= 0, "epoch_iters", f"must be >= 0, got {self.epoch_iters}")
        check(self.lrn_rate >= 0, "lrn_rate", f"must be >= 0, got {self.lrn_rate}")
