"""Distiller classes the schedule reader knows but does not run: each with what to use instead.

The reader refuses them at the ``class:`` line of the file, so a Distiller schedule either runs
with Distiller's meaning or stops before training, naming the class and the alternative.
"""
from __future__ import annotations

REFUSED: dict[str, dict[str, str]] = {
    "pruners": {
        "BernoulliFilterPruner": "it drops random filters anew at every mini-batch (a regulariser "
                                 "like DropFilter, not a pruning decision); use RandomRankedFilterPruner "
                                 "for a random filter selection, or L1RankedStructureParameterPruner",
        "BernoulliFilterPruner_AGP": "see BernoulliFilterPruner; use RandomRankedFilterPruner_AGP or "
                                     "L1RankedStructureParameterPruner_AGP",
        "RandomLevelStructureParameterPruner": "it draws a new sparsity level at every event, so the "
                                               "result has no fixed size; use "
                                               "L1RankedStructureParameterPruner with desired_sparsity",
        "GradientRankedFilterPruner": "ranking by weight x gradient is not implemented; use "
                                      "L1RankedStructureParameterPruner (group_type: Filters) or "
                                      "--learner=dis-chn-pruned (discrimination-aware selection)",
        "GradientRankedFilterPruner_AGP": "ranking by weight x gradient is not implemented; use "
                                          "L1RankedStructureParameterPruner_AGP",
        "FMReconstructionChannelPruner": "feature-map reconstruction is this project's channel "
                                         "learners: --learner=chn-pruned-gpu (LASSO + least squares) "
                                         "or --learner=chn-pruned-rmt",
        "StructuredAutomatedGradualPruner": "an old Distiller name; use "
                                            "L1RankedStructureParameterPruner_AGP with group_type",
        "BaiduRNNPruner": "it prunes recurrent layers (gate weights of LSTMs), which this project's "
                          "CNN helpers do not have; use AutomatedGradualPruner",
        "AutomatedGradualRowPruner": "use L1RankedStructureParameterPruner_AGP with group_type: Rows",
        "L1RankedStructureParameterPruner_AGP_Blocks": "block pruning is not implemented",
    },
    "regularizers": {
        "DropFilter": "use L1Regularizer or GroupLassoRegularizer",
    },
    "quantizers": {
        "WRPNQuantizer": "use DorefaQuantizer (the same weight quantizer) with bits_weights",
        "FP16Quantizer": "half precision is a deployment choice here: export the fp32 model",
        "NCFQuantAwareTrainQuantizer": "use DorefaQuantizer or --learner=uniform",
    },
    "lr_schedulers": {
        "ReduceLROnPlateau": "it reacts to a validation metric, which the schedule does not compute "
                             "every epoch; use MultiStepLR or MultiStepMultiGammaLR with fixed milestones",
        "CosineAnnealingWarmRestarts": "use CosineAnnealingLR (one cycle) or MultiStepLR",
        "LambdaLR": "a Python function cannot come from YAML; use MultiStepMultiGammaLR",
        "CyclicLR": "use CosineAnnealingLR or MultiStepLR",
        "OneCycleLR": "use CosineAnnealingLR or MultiStepLR",
    },
    "extensions": {},
}

# Distiller model families whose module names a schedule may use: name fragment -> family (and
# the registered net with those names, where there is one). A hint applies only when the model
# has no module name with the fragment: a --net=vgg16_cifar model has ``features.``.
ARCH_HINTS = {"pre_relu": "preact_resnet", "pre_bn": "preact_resnet", "final_relu": "preact_resnet",
              "final_bn": "preact_resnet", "features.": "vgg / alexnet", "classifier.": "vgg / alexnet",
              "model.": "mobilenet", "encoder": "word language model", "decoder": "word language model",
              "rnn.": "word language model"}
# families with registered nets under Distiller's module names (nets/models/distiller_cifar.py)
ARCH_NETS = {"preact_resnet": "preact_resnet20_cifar", "vgg / alexnet": "vgg16_cifar"}


def refusal(section: str, cls: str) -> str | None:
    """The message for a known, unsupported Distiller class of ``section`` (None otherwise)."""
    reason = REFUSED.get(section, {}).get(cls)
    return None if reason is None else f"Distiller's {cls} is not supported: {reason}"


def arch_hint(name: str, model_names: list[str] | tuple[str, ...] = ()) -> str | None:
    """The Distiller model family ``name`` comes from, when a fragment of it says so and none of
    ``model_names`` (the model's own names) has that fragment."""
    for fragment, family in ARCH_HINTS.items():
        if fragment in name and not any(fragment in own for own in model_names):
            return family
    return None
