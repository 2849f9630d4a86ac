"""Distiller's own schedule files run unchanged: each test writes a schedule in Distiller's syntax
(``module.`` prefixes, ``downsample`` names, its classes and keys) and checks Distiller's meaning."""
from __future__ import annotations

import warnings

import pytest
import torch

from compression.graph.layers import analyse
from compression.sparsity.masks import detach_masks, masks_of
from compression.sparsity.agp import agp_sparsity
from compression.schedule.lr import policy_lr
from compression.schedule.names import resolve_names
from compression.schedule.policy import PolicyError, load_policy
from compression.schedule.quantizers import bits_of
from compression.schedule.regularizers import threshold
from compression.schedule.scheduler import CompressionScheduler
from compression.schedule.zero_structures import zero_keep
from compression.surgery.thinning import thin
from tests.conftest import compress_digits, digits_helper, distiller_resnet20

# Distiller's examples/agp-pruning/resnet20_filters.schedule_agp.yaml, epochs scaled down
# (pruning 0..30 -> 0..6, thinning at 30 -> 6, fine pruning 30..50 -> 6..10): every name, class
# and key as published.
AGP_FILTERS = """
version: 1
pruners:
  low_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity : 0.10
    final_sparsity: 0.50
    group_type: Filters
    weights: [module.layer2.0.conv1.weight, module.layer2.0.conv2.weight,
              module.layer2.0.downsample.0.weight,
              module.layer2.1.conv2.weight, module.layer2.2.conv2.weight,
              module.layer2.1.conv1.weight, module.layer2.2.conv1.weight]
  fine_pruner:
    class:  AutomatedGradualPruner
    initial_sparsity : 0.05
    final_sparsity: 0.70
    weights: [module.layer3.1.conv1.weight,  module.layer3.1.conv2.weight,
              module.layer3.2.conv1.weight,  module.layer3.2.conv2.weight]
  fc_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity : 0.05
    final_sparsity: 0.50
    group_type: Rows
    weights: [module.fc.weight]
lr_schedulers:
  pruning_lr:
    class: StepLR
    step_size: 50
    gamma: 0.10
extensions:
  net_thinner:
      class: 'FilterRemover'
      thinning_func_str: remove_filters
      arch: 'resnet20_cifar'
      dataset: 'cifar10'
policies:
  - pruner:
      instance_name : low_pruner
    starting_epoch: 0
    ending_epoch: 6
    frequency: 2
  - extension:
      instance_name: net_thinner
    epochs: [6]
  - pruner:
      instance_name : fine_pruner
    starting_epoch: 6
    ending_epoch: 10
    frequency: 2
  - pruner:
      instance_name : fc_pruner
    starting_epoch: 6
    ending_epoch: 10
    frequency: 2
  - lr_scheduler:
      instance_name: pruning_lr
    starting_epoch: 0
    ending_epoch: 400
    frequency: 1
"""


def write(tmp_path, text: str, name: str = "distiller.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def scheduler_for(path: str, model, inclusive: bool = False) -> CompressionScheduler:
    policy = load_policy(path, inclusive_end=inclusive)
    resolve_names(policy, model)
    scheduler = CompressionScheduler(policy, model, (1, 8, 8), 1)
    scheduler.set_segment(model, 0)
    return scheduler


def test_names_map_module_prefix_and_torchvision_downsample(tmp_path):
    policy = load_policy(write(tmp_path, AGP_FILTERS))
    mapped = resolve_names(policy, distiller_resnet20())
    assert mapped["module.layer2.0.downsample.0.weight"] == "layer2.0.shortcut.0.weight"
    assert mapped["module.fc.weight"] == "fc.weight"
    assert policy.instances["pruners"]["fine_pruner"].params["weights"][0] == "layer3.1.conv1.weight"


def test_exclusive_ending_epoch_gives_distillers_agp_ramp(tmp_path):
    """Distiller: active at range(s, e, f); target = final + (initial - final) * (1 - (t - s) /
    span)^3 with span = ((e - s - 1) // f) * f."""
    policy = load_policy(write(tmp_path, AGP_FILTERS))
    low = policy.policies[0]
    assert low.active_epochs() == [0, 2, 4]
    s, e, f = 0, 6, 2
    span = ((e - s - 1) // f) * f
    for t in low.active_epochs():
        expected = 0.5 + (0.1 - 0.5) * (1 - (t - s) / span) ** 3
        assert agp_sparsity(0.1, 0.5, t, low.active_epochs()[0], low.active_epochs()[-1]) == \
            pytest.approx(expected, abs=1e-12)
    inclusive = load_policy(write(tmp_path, AGP_FILTERS), inclusive_end=True)
    assert inclusive.policies[0].active_epochs() == [0, 2, 4, 6]   # the project's earlier reading
    empty = write(tmp_path, "lr_schedulers:\n  lr: {class: StepLR, step_size: 2}\npolicies:\n"
                            "  - lr_scheduler: {instance_name: lr}\n    starting_epoch: 3\n"
                            "    ending_epoch: 3\n", "empty.yaml")
    with pytest.raises(PolicyError, match="ending_epoch 3 equals starting_epoch: the range is empty"):
        load_policy(empty)


@pytest.mark.parametrize("cls,keys,distiller", [
    ("StepLR", "step_size: 3\n    gamma: 0.1",
     lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.1)),
    ("ExponentialLR", "gamma: 0.9", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)),
    ("MultiStepMultiGammaLR", "milestones: [3, 5, 6]\n    gammas: [0.1, 0.5, 0.2]", None),
    ("CosineAnnealingLR", "T_max: 8\n    eta_min: 0.001",
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 8, 0.001)),
])
def test_lr_schedulers_follow_distillers_stepping(tmp_path, cls, keys, distiller):
    """Distiller steps an LR policy at the END of each active epoch a with step(epoch=a + 1)
    (torch's closed form at that absolute epoch); before its first step the base rate."""
    path = write(tmp_path, f"lr_schedulers:\n  lr:\n    class: {cls}\n    {keys}\npolicies:\n"
                           "  - lr_scheduler: {instance_name: lr}\n    starting_epoch: 2\n"
                           "    ending_epoch: 8\n    frequency: 1\n")
    schedule = policy_lr(load_policy(path), 0.2, iters_per_epoch=3, nb_epochs=11)
    if distiller is None:   # Distiller's MultiStepMultiGammaLR: base * prod(gammas[:bisect])
        gammas = {0: 1.0, 3: 0.1, 4: 0.1, 5: 0.05, 6: 0.01, 7: 0.01, 8: 0.01}
        reference = [0.2 * gammas[min(max(t, 0), 8)] for t in [0, 0, 0, 3, 4, 5, 6, 7, 8, 8, 8]]
    else:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
        scheduler, reference = distiller(optimizer), []
        for epoch in range(11):
            reference.append(optimizer.param_groups[0]["lr"])
            if 2 <= epoch < 8:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scheduler.step(epoch + 1)
    for epoch in range(11):
        assert schedule(3 * epoch) == pytest.approx(reference[epoch], rel=1e-9), epoch
        assert schedule(3 * epoch + 2) == schedule(3 * epoch)


def test_structured_agp_filters_on_residual_streams_thin_exactly(tmp_path):
    model = distiller_resnet20()
    scheduler = scheduler_for(write(tmp_path, AGP_FILTERS), model)
    for epoch in (0, 2, 4):
        scheduler.fire(epoch)
    keep = scheduler.keep
    # the layer2 stream (written by 2.0.conv2, 2.0.shortcut.0, 2.1.conv2, 2.2.conv2) loses
    # floor(0.5 * 32) = 16 channels at the last event, the same for every reader of it
    stream_readers = ["layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.shortcut.0"]
    kept = [keep[name].tolist() for name in stream_readers]
    assert all(k == kept[0] for k in kept) and len(kept[0]) == 16
    assert len(keep["layer2.0.conv2"]) == 16          # layer2.0.conv1's filters: 16 of 32
    masks = masks_of(model)
    for writer in ("layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"):
        zero_rows = int((masks[writer].mask.flatten(1).sum(dim=1) == 0).sum())
        assert zero_rows == 16, writer
    inputs = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        masked = model(inputs)
    layers = analyse(model, (1, 8, 8))
    detach_masks(model)
    thinned, _ = thin(model, layers, keep)
    with torch.no_grad():
        assert float((thinned.eval()(inputs) - masked).abs().max()) <= 1e-5
    assert thinned.layer2[1].conv1.in_channels == 16 and thinned.layer2[0].shortcut[0].out_channels == 16
    assert thinned.layer3[0].conv1.in_channels == 16


def test_agp_filters_schedule_runs_end_to_end(tmp_path, tiny_pretrained, one_thread):
    """The published file: thinning at 6, then AGP and fc rows (input columns) to epoch 8."""
    result = compress_digits(tmp_path, tiny_pretrained, "schedule", helper=digits_helper(batch_size=32),
                             compress=write(tmp_path, AGP_FILTERS), nb_epochs=10, epoch_iters=1,
                             save_step=100, export_format="none")
    report = result.report
    assert report["policy"]["names"]["module.layer2.0.downsample.0.weight"] == "layer2.0.shortcut.0.weight"
    assert report["thinning"]["epoch"] == 6 and report["thinning"]["max_abs_diff"] <= 1e-5
    assert report["kept_channels"]["layer2.1.conv1"] == [16, 32]
    layer = report["sparsity"]["layers"]["layer3.1.conv1"]
    assert layer["zeros"] == layer["target_zeros"] == round(0.7 * layer["numel"])
    assert report["sparsity"]["layers"]["fc"]["zeros"] == 10 * 32   # floor(0.5 * 64) columns
    again = compress_digits(tmp_path, tiny_pretrained, "schedule", helper=digits_helper(batch_size=32),
                            compress=write(tmp_path, AGP_FILTERS), nb_epochs=10, epoch_iters=1,
                            save_step=100, export_format="none", resume=True).report
    assert again["accuracy"]["compressed"] == report["accuracy"]["compressed"]   # the thinned
    assert again["params"]["compressed"] == report["params"]["compressed"]       # segment resumed


def test_fold_batchnorm_ranks_filters_by_the_folded_weights(tmp_path):
    text = """pruners:
  f: {class: L1RankedStructureParameterPruner, group_type: Filters, desired_sparsity: 0.25,
      weights: [module.layer1.0.conv1.weight]}
policies:
  - pruner:
      instance_name: f
      args: {fold_batchnorm: FOLD}
    epochs: [0]
"""
    removed = {}
    for fold in ("false", "true"):
        model = distiller_resnet20()
        with torch.no_grad():
            model.layer1[0].conv1.weight[:4] *= 10.0        # large filters ...
            model.layer1[0].bn1.weight[:4] = 1e-3           # ... that their BN silences
        scheduler = scheduler_for(write(tmp_path, text.replace("FOLD", fold), f"{fold}.yaml"), model)
        scheduler.fire(0)
        removed[fold] = sorted(set(range(16)) - set(scheduler.keep["layer1.0.conv2"].tolist()))
    assert removed["true"] == [0, 1, 2, 3] and not set(removed["false"]) & {0, 1, 2, 3}


# Distiller's examples/pruning_filters_for_efficient_convnets/resnet56_cifar_channel_rank.yaml,
# on the digits ResNet-20's blocks (3 per stage instead of 9), every key as published
CHANNEL_RANK = """
version: 1
pruners:
  filter_pruner_70:
    class: 'L1RankedStructureParameterPruner'
    group_type: Channels
    desired_sparsity: 0.7
    group_dependency: Leader
    weights: [
      module.layer1.1.conv1.weight,
      module.layer1.0.conv1.weight,
      module.layer1.2.conv1.weight]
  filter_pruner_60:
    class: 'L1RankedStructureParameterPruner'
    group_type: Channels
    desired_sparsity: 0.6
    weights: [module.layer2.1.conv2.weight, module.layer2.2.conv2.weight]
extensions:
  net_thinner:
      class: StructureRemover
      thinning_func_str: remove_channels
      arch: resnet56_cifar
      dataset: cifar10
lr_schedulers:
   exp_finetuning_lr:
     class: ExponentialLR
     gamma: 0.95
policies:
  - pruner:
      instance_name: filter_pruner_70
    epochs: [0]
  - pruner:
      instance_name: filter_pruner_60
    epochs: [0]
  - extension:
      instance_name: net_thinner
    epochs: [0]
  - lr_scheduler:
      instance_name: exp_finetuning_lr
    starting_epoch: 10
    ending_epoch: 300
    frequency: 1
"""


def test_group_type_desired_sparsity_and_leader(tmp_path):
    model = distiller_resnet20()
    scheduler = scheduler_for(write(tmp_path, CHANNEL_RANK), model)
    leader = model.layer1[1].conv1.weight.detach().abs().mean(dim=(0, 2, 3))
    scheduler.fire(0)
    keep = scheduler.keep
    expected = sorted(torch.argsort(leader, stable=True)[11:].tolist())   # floor(0.7 * 16) = 11 go
    for name in ("layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"):
        assert keep[name].tolist() == expected, name        # the leader's channels for all
    own = model.layer2[1].conv2.weight.detach().abs().mean(dim=(0, 2, 3))
    assert keep["layer2.1.conv2"].tolist() == sorted(torch.argsort(own, stable=True)[19:].tolist())
    assert len(keep["layer2.1.conv2"]) == 32 - 19            # floor(0.6 * 32) = 19 removed


def test_filter_rank_prunes_each_conv1_at_its_own_rate(tmp_path):
    leader = "group_type: Channels\n    desired_sparsity: 0.7\n    group_dependency: Leader"
    text = CHANNEL_RANK.replace(leader, "group_type: Filters\n    desired_sparsity: 0.7")
    text = text.replace("module.layer2.1.conv2.weight, module.layer2.2.conv2.weight",
                        "module.layer2.1.conv1.weight").replace("group_type: Channels", "group_type: Filters")
    model = distiller_resnet20()
    scheduler = scheduler_for(write(tmp_path, text), model)
    scheduler.fire(0)
    assert {n: len(k) for n, k in scheduler.keep.items()} == {
        "layer1.0.conv2": 5, "layer1.1.conv2": 5, "layer1.2.conv2": 5, "layer2.1.conv2": 13}


def test_filters_of_one_stream_with_different_fractions_are_refused(tmp_path):
    text = """pruners:
  a: {class: L1RankedStructureParameterPruner, group_type: Filters, desired_sparsity: 0.5,
      weights: [module.layer1.0.conv2.weight]}
  b: {class: L1RankedStructureParameterPruner, group_type: Filters, desired_sparsity: 0.25,
      weights: [module.layer1.1.conv2.weight]}
policies:
  - pruner: {instance_name: a}
    epochs: [0]
  - pruner: {instance_name: b}
    epochs: [0]
"""
    with pytest.raises(PolicyError, match="is also masked by pruner a"):
        scheduler_for(write(tmp_path, text), distiller_resnet20())


# Distiller's examples/quantization/quant_aware_train/preact_resnet_cifar_dorefa.yaml
DOREFA_PREACT = """
quantizers:
  dorefa_quantizer:
    class: DorefaQuantizer
    bits_activations: 8
    bits_weights: 3
    overrides:
      conv1:
        bits_weights: null
        bits_activations: null
      layer1.0.pre_relu:
        bits_weights: null
        bits_activations: null
      final_relu:
        bits_weights: null
        bits_activations: null
      fc:
        bits_weights: null
        bits_activations: null
lr_schedulers:
  training_lr:
    class: MultiStepMultiGammaLR
    milestones: [80, 120, 160]
    gammas: [0.1, 0.1, 0.2]
policies:
    - quantizer:
        instance_name: dorefa_quantizer
      starting_epoch: 0
      ending_epoch: 200
      frequency: 1
    - lr_scheduler:
        instance_name: training_lr
      starting_epoch: 0
      ending_epoch: 161
      frequency: 1
"""


def test_overrides_naming_another_model_say_which(tmp_path):
    path = write(tmp_path, DOREFA_PREACT)
    with pytest.raises(PolicyError) as err:
        resolve_names(load_policy(path), distiller_resnet20())
    message = str(err.value)
    assert message.startswith(f"{path}:11:7: quantizers.dorefa_quantizer.overrides.layer1.0.pre_relu: ")
    assert "Distiller's preact_resnet models" in message and "layer1.0.relu1" in message


def test_overrides_give_modules_their_bits(tmp_path):
    text = DOREFA_PREACT.replace("layer1.0.pre_relu:", "'module\\.layer1\\..*relu.*':").replace(
        "      final_relu:\n        bits_weights: null\n        bits_activations: null\n", "")
    pattern = "'module\\.layer1\\..*relu.*':\n"
    text = text.replace(pattern + "        bits_weights: null\n        bits_activations: null",
                        pattern + "        bits_activations: 4")
    model = distiller_resnet20()
    policy = load_policy(write(tmp_path, text))
    mapped = resolve_names(policy, model)
    assert mapped == {"module\\.layer1\\..*relu.*": "layer1\\..*relu.*"}
    weights, acts = bits_of(model, policy.instances["quantizers"]["dorefa_quantizer"])
    assert "conv1" not in weights and "fc" not in weights
    assert weights["layer1.0.conv1"] == 3 and weights["layer3.0.shortcut.0"] == 3
    assert acts["layer1.0.relu1"] == 4 and acts["layer2.0.relu1"] == 8 and "relu" in acts
    assert len(weights) == 20   # every conv/linear but the two overridden


def thin_zeros_exactly(model):
    """The model thinned of its exactly-zero channels; its outputs must not change."""
    inputs = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        before = model(inputs)
    layers = analyse(model, (1, 8, 8))
    keep, found = zero_keep(model, layers)
    thinned, _ = thin(model, layers, keep)
    with torch.no_grad():
        assert float((thinned.eval()(inputs) - before).abs().max()) <= 1e-5
    return thinned, found


SLIMMING = """
lr_schedulers:
  training_lr:
    class: StepLR
    step_size: 45
    gamma: 0.10
regularizers:
  Channels_groups_regularizer:
    class: L1Regularizer
    reg_regims:
      module.layer1.0.bn1.weight: 0.3
      module.layer2.1.bn1.weight: 0.3
      module.layer3.2.bn2.weight: 0.3
    threshold_criteria: Mean_Abs
extensions:
  net_thinner:
      class: 'ChannelRemover'
      thinning_func_str: remove_channels
      arch: 'resnet20_cifar'
      dataset: 'cifar10'
policies:
  - lr_scheduler:
      instance_name: training_lr
    starting_epoch: 45
    ending_epoch: 300
    frequency: 1
  - extension:
      instance_name: net_thinner
    epochs: [2]
  - regularizer:
      instance_name: Channels_groups_regularizer
      args:
        keep_mask: True
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
"""


def test_bn_slimming_threshold_zeroes_gamma_and_beta_and_thinning_removes_exactly(tmp_path):
    model = distiller_resnet20()
    policy = load_policy(write(tmp_path, SLIMMING))
    resolve_names(policy, model)
    params = policy.instances["regularizers"]["Channels_groups_regularizer"].params
    with torch.no_grad():
        model.layer1[0].bn1.weight[:5] = 0.1       # below the strength: slimmed
        model.layer3[2].bn2.weight[:7] = 0.1       # a residual member: zero, but the stream stays
    threshold(model, "L1Regularizer", params)
    assert int((model.layer1[0].bn1.weight == 0).sum()) == 5
    assert int((model.layer1[0].bn1.bias == 0).sum()) == 5
    thinned, found = thin_zeros_exactly(model)
    assert found["zero_channels"] == {"layer1.0.bn1": 5}
    assert thinned.layer1[0].conv1.out_channels == 11 and thinned.layer1[0].conv2.in_channels == 11
    assert thinned.layer3[2].conv2.out_channels == 64


def test_slimming_schedule_runs_and_thins(tmp_path, tiny_pretrained, one_thread):
    text = SLIMMING.replace("module.layer1.0.bn1.weight: 0.3", "module.layer1.0.bn1.weight: 1.0")
    result = compress_digits(tmp_path, tiny_pretrained, "schedule", helper=digits_helper(batch_size=32),
                             compress=write(tmp_path, text), nb_epochs=3, epoch_iters=2,
                             save_step=100, export_format="none")
    report = result.report
    found = report["thinning"]["zero_channels"]
    assert found.get("layer1.0.bn1", 0) > 0 and report["thinning"]["max_abs_diff"] <= 1e-5
    assert "layer3.2.bn2" not in found                     # a residual member is never removed
    # the barely trained gammas are all below 1.0: all 16 slimmed, one zero column kept
    assert found["layer1.0.bn1"] == 16 and report["kept_channels"]["layer1.0.conv2"] == [1, 16]


def test_group_lasso_threshold_and_channel_remover(tmp_path):
    text = """regularizers:
  ssl:
    class: GroupLassoRegularizer
    reg_regims:
      module.layer1.0.conv2.weight: [0.05, Channels]
      module.layer2.0.conv1.weight: [0.05, Filters]
    threshold_criteria: Max
policies:
  - regularizer: {instance_name: ssl, args: {keep_mask: True}}
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
"""
    model = distiller_resnet20()
    policy = load_policy(write(tmp_path, text))
    resolve_names(policy, model)
    with torch.no_grad():
        model.layer1[0].conv2.weight[:, :6] *= 1e-3
        model.layer2[0].conv1.weight[:4] *= 1e-3
    threshold(model, "GroupLassoRegularizer", policy.instances["regularizers"]["ssl"].params)
    w = model.layer1[0].conv2.weight
    assert int((w.abs().sum(dim=(0, 2, 3)) == 0).sum()) == 6
    assert int((model.layer2[0].conv1.weight.abs().sum(dim=(1, 2, 3)) == 0).sum()) == 4
    thinned, found = thin_zeros_exactly(model)
    assert found["zero_columns"] == {"layer1.0.conv2": 6}
    assert thinned.layer1[0].conv1.out_channels == 10


@pytest.mark.parametrize("section,cls,alternative", [
    ("pruners", "BernoulliFilterPruner_AGP", "RandomRankedFilterPruner_AGP"),
    ("pruners", "FMReconstructionChannelPruner", "--learner=chn-pruned-gpu"),
    ("lr_schedulers", "ReduceLROnPlateau", "MultiStepLR"),
])
def test_unsupported_distiller_classes_are_refused_with_an_alternative(tmp_path, section, cls, alternative):
    path = write(tmp_path, f"{section}:\n  x:\n    class: {cls}\npolicies:\n  - lr_scheduler: "
                           "{instance_name: x}\n    epochs: [0]\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3:12: {section}.x.class: Distiller's {cls} is not supported: ")
    assert alternative in message


def test_policy_args_keep_their_meaning_or_are_refused(tmp_path):
    base = """pruners:
  p: {class: AutomatedGradualPruner, initial_sparsity: 0.1, final_sparsity: 0.5, weights: [module.fc.weight]}
policies:
  - pruner:
      instance_name: p
      args: {ARGS}
    starting_epoch: 0
    ending_epoch: 3
"""
    assert load_policy(write(tmp_path, base.replace("ARGS", "keep_mask: true"))).policies[0].args == \
        {"keep_mask": True}
    # AGP recomputes its mask every 5 mini-batches, as Distiller's files ask; a ranked pruner
    # fires when its epoch begins, so the same argument is refused for it
    assert load_policy(write(tmp_path, base.replace("ARGS", "mini_batch_pruning_frequency: 5"))) \
        .policies[0].args == {"mini_batch_pruning_frequency": 5}
    ranked = base.replace("AutomatedGradualPruner,", "L1RankedStructureParameterPruner_AGP, "
                          "group_type: Filters,").replace("module.fc.weight", "module.layer1.0.conv1.weight")
    with pytest.raises(PolicyError, match=r"args.mini_batch_pruning_frequency: 5 is not supported "
                                          r"with L1RankedStructureParameterPruner_AGP \(only "
                                          r"AutomatedGradualPruner and SplicingPruner"):
        load_policy(write(tmp_path, ranked.replace("ARGS", "mini_batch_pruning_frequency: 5")))
    with pytest.raises(PolicyError, match="unknown argument 'colour'"):
        load_policy(write(tmp_path, base.replace("ARGS", "colour: red")))


def test_level_and_sensitivity_pruners(tmp_path):
    text = """pruners:
  level: {class: SparsityLevelParameterPruner, levels: {module.layer1.0.conv1.weight: 0.6}}
  sens: {class: SensitivityPruner, sensitivities: {module.layer2.0.conv1.weight: 0.5}}
policies:
  - pruner: {instance_name: level}
    epochs: [0]
  - pruner: {instance_name: sens}
    epochs: [0]
"""
    model = distiller_resnet20()
    weight = model.layer2[0].conv1.weight.detach().clone()
    scheduler = scheduler_for(write(tmp_path, text), model)
    scheduler.fire(0)
    assert int((model.layer1[0].conv1.weight == 0).sum()) == round(0.6 * 16 * 16 * 9)
    expected = int((weight.abs() <= 0.5 * float(weight.std())).sum())
    assert int((model.layer2[0].conv1.weight == 0).sum()) == expected
