"""full-prec: train the full-precision model with the helper's schedule (optionally distilled)."""
from __future__ import annotations

import logging

from learners import composition
from learners.abstract_learner import AbstractLearner
from learners.registry import register_learner
from utils.model_io import load_weights_from

log = logging.getLogger("pocketflow")


@register_learner("full-prec")
class FullPrecLearner(AbstractLearner):
    """Momentum SGD + weight decay over the helper's LR schedule; saves the model artifact."""

    def train(self) -> dict:
        spec = self.helper.net_spec()
        if self.warm_started:  # any learner's result, its architecture included
            model, obj, self.chain = composition.load_start(self.cfg.warm_start_path,
                                                            type(self), self.helper)
            spec = obj["spec"]
            log.info("warm start from %s", self.cfg.warm_start_path)
        else:
            model = self.helper.build_model()
            if self.cfg.enbl_warm_start:  # continue training the full model
                load_weights_from(model, self.cfg.save_path_eval)
                log.info("warm start from %s", self.cfg.save_path_eval)
        model = model.to(self.device)
        teacher = self.teacher() if self.cfg.enbl_dst else None
        self.fit(model, self.helper.lr_schedule(self.mgw.size()), tag="train", spec=spec,
                 teacher=teacher)
        report = self.new_report()
        report["accuracy"]["full"] = self.run_evaluation(model)["accuracy"]
        size = self.save_artifact(model, spec, {"accuracy": report["accuracy"]["full"]})
        if self.mgw.is_primary():
            self.model_report(model, "full", report, size)
            self.deploy_model(model, report)
        return self.finish_report(report)
