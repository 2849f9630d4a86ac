"""Compression-schedule YAML: parsing and validation errors with file:line:column and key path."""
from __future__ import annotations

from pathlib import Path

import pytest

from compression.schedule.names import resolve_names
from compression.schedule.policy import PolicyError, check_epochs, load_policy
from compression.schedule.scheduler import CompressionScheduler
from nets.registry import build_from_spec, net_spec
from utils.config import ConfigError
from tests.conftest import REPO

EXAMPLES = sorted((REPO / "examples" / "policies").glob("*.yaml"))

AGP = """version: 1
pruners:
  conv_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: {initial}
    final_sparsity: {final}
    weights: [{weights}]
policies:
  - pruner:
      instance_name: {name}
{epochs}
"""
RANGE = "    starting_epoch: 0\n    ending_epoch: 3\n    frequency: 1"


def resnet20():
    return build_from_spec(net_spec("resnet20", num_classes=10, in_channels=1))


def write(tmp_path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def agp(tmp_path, initial="0.1", final="0.5", weights="layer1.0.conv1.weight", name="conv_pruner",
        epochs=RANGE) -> str:
    return write(tmp_path, AGP.format(initial=initial, final=final, weights=weights, name=name,
                                      epochs=epochs))


def error_of(path: str, model=None, nb_epochs=None) -> str:
    with pytest.raises(PolicyError) as err:
        policy = load_policy(path)
        if model is not None:
            resolve_names(policy, model)
            CompressionScheduler(policy, model, (1, 8, 8), 1)
        if nb_epochs is not None:
            check_epochs(policy, nb_epochs)
    assert isinstance(err.value, ConfigError)
    return str(err.value)


def test_unknown_key_names_place_and_valid_keys(tmp_path):
    path = agp(tmp_path)
    text = Path(path).read_text().replace("    final_sparsity", "    final_sparsty")
    Path(path).write_text(text)
    assert error_of(path) == (f"{path}:6:5: pruners.conv_pruner: unknown key 'final_sparsty'; valid keys: "
                              "class, initial_sparsity, final_sparsity, weights")


def test_unknown_section_and_class(tmp_path):
    path = write(tmp_path, "version: 1\nprunners:\n  a: {class: X}\npolicies: []\n")
    message = error_of(path)
    assert message.startswith(f"{path}:2:1: prunners: unknown section 'prunners'")
    assert "pruners, regularizers, quantizers, lr_schedulers, extensions" in message
    path = write(tmp_path, "pruners:\n  p:\n    class: MagicPruner\npolicies: []\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3:12: pruners.p.class: unknown class 'MagicPruner'")
    assert "AutomatedGradualPruner, L1RankedStructureParameterPruner" in message


def test_wrong_type_and_ranges(tmp_path):
    assert error_of(agp(tmp_path, final='"high"')) == (
        f"{tmp_path}/policy.yaml:6:21: pruners.conv_pruner.final_sparsity: expected a number, got 'high'")
    assert "final_sparsity: must be in [0, 1), got 1.2" in error_of(agp(tmp_path, final="1.2"))
    message = error_of(agp(tmp_path, initial="0.6", final="0.5"))
    assert message.startswith(f"{tmp_path}/policy.yaml:5:5: pruners.conv_pruner.initial_sparsity: ")
    assert "initial_sparsity 0.6 is larger than final_sparsity 0.5" in message


def test_undefined_instance_name(tmp_path):
    message = error_of(agp(tmp_path, name="no_such"))
    assert message == (f"{tmp_path}/policy.yaml:10:22: policies[0].pruner.instance_name: pruners has no "
                       "instance 'no_such'; defined: conv_pruner")


def test_epochs_and_range_both_or_neither(tmp_path):
    message = error_of(agp(tmp_path, epochs="    epochs: [0, 1]\n" + RANGE))
    assert message.startswith(f"{tmp_path}/policy.yaml:11:5: policies[0]: give either 'epochs: [..]'")
    message = error_of(agp(tmp_path, epochs=""))
    assert message.startswith(f"{tmp_path}/policy.yaml:9:5: policies[0]: missing epochs")


@pytest.mark.parametrize("epochs,where,text", [
    ("    starting_epoch: 3\n    ending_epoch: 1", "12:19: policies[0].ending_epoch",
     "ending_epoch 1 is before starting_epoch 3"),
    ("    starting_epoch: -1\n    ending_epoch: 1", "11:21: policies[0].starting_epoch", "must be >= 0"),
    ("    starting_epoch: 0\n    ending_epoch: 2\n    frequency: 0", "13:16: policies[0].frequency",
     "must be >= 1, got 0"),
    ("    epochs: [0, -2]", "11:13: policies[0].epochs", "epochs must be >= 0"),
])
def test_impossible_epoch_ranges(tmp_path, epochs, where, text):
    message = error_of(agp(tmp_path, epochs=epochs))
    assert message.startswith(f"{tmp_path}/policy.yaml:{where}: "), message
    assert text in message


def test_ending_epoch_beyond_the_run(tmp_path):
    message = error_of(agp(tmp_path), nb_epochs=2)  # active epochs 0, 1, 2 (Distiller's end: 3)
    assert message == (f"{tmp_path}/policy.yaml:12:19: policies[0].ending_epoch: epoch 2 is beyond the "
                       "run's 2 epochs (0..1); raise --sch_nb_epochs or end the policy earlier")


def test_weight_not_in_model_lists_close_names(tmp_path):
    message = error_of(agp(tmp_path, weights="layer1.0.conv3.weight"), model=resnet20())
    assert message.startswith(f"{tmp_path}/policy.yaml:7:5: pruners.conv_pruner.weights: no conv/linear "
                              "weight 'layer1.0.conv3.weight' in the model; close names: ")
    assert "layer1.0.conv1.weight" in message


def test_filters_reaching_the_output_are_refused(tmp_path):
    path = write(tmp_path, """pruners:
  f:
    class: L1RankedStructureParameterPruner
    reg_regims:
      'fc.weight': [0.5, '3D']
policies:
  - pruner: {instance_name: f}
    epochs: [0]
""")
    message = error_of(path, model=resnet20())
    assert message.startswith(f"{path}:5:7: pruners.f.reg_regims.fc.weight: cannot remove "
                              "filters of fc: its outputs reach the model's output")
    path = write(tmp_path, Path(path).read_text().replace("[0.5, '3D']", "[0.5, 'Blocks']"))
    assert "structure must be one of 3D, Filters, Channels, Rows, got 'Blocks'" in error_of(path)


def test_missing_file_empty_flag_and_bad_syntax(tmp_path):
    message = error_of(str(tmp_path / "nope.yaml"))
    assert "no such file" in message and "compression schedule YAML" in message
    assert "--compress: the schedule learner needs" in error_of("")
    path = write(tmp_path, "pruners:\n  p: [1, 2\npolicies: []\n")
    message = error_of(path)
    assert message == f"{path}:3:9: invalid YAML: expected ',' or ']', but got ':'"


def test_regularizer_quantizer_lr_and_extension_keys(tmp_path):
    path = write(tmp_path, """quantizers:
  q: {class: PACTQuantizer, bits_weights: 4, bits_activations: 40}
policies:
  - quantizer: {instance_name: q}
    epochs: [0]
""")
    assert error_of(path).startswith(f"{path}:2:64: quantizers.q.bits_activations: must be in [1, 16]")
    path = write(tmp_path, """lr_schedulers:
  lr: {class: MultiStepLR, milestones: [5, 2]}
policies:
  - lr_scheduler: {instance_name: lr}
    starting_epoch: 0
    ending_epoch: 3
""")
    assert "lr_schedulers.lr.milestones: must be increasing" in error_of(path)
    path = write(tmp_path, """extensions:
  t: {class: FilterRemover, thinning_func_str: remove_rows}
policies:
  - extension: {instance_name: t}
    epochs: [0]
""")
    assert "extensions.t.thinning_func_str: must be one of remove_channels, remove_filters" in error_of(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_resnet20(path):
    assert len(EXAMPLES) == 4
    policy = load_policy(str(path))
    model = resnet20()
    resolve_names(policy, model)
    check_epochs(policy, policy.last_epoch + 1)
    CompressionScheduler(policy, model, (1, 8, 8), 1)
    assert policy.summary()["policies"]


def test_a_layer_two_pruners_mask_keeps_both_masks(tmp_path):
    """f removes half the filters of layer1.0.conv1, so half the input channels of
    layer1.0.conv2, which AGP g masks at 10 % then 75 % (Distiller's schedule_agp_3 pattern):
    the layer's mask is the product of both, whichever fires last."""
    import torch

    from compression.sparsity.masks import masks_of

    path = write(tmp_path, """pruners:
  f:
    class: L1RankedStructureParameterPruner
    reg_regims: {'layer1.0.conv1.weight': [0.5, '3D']}
  g:
    class: AutomatedGradualPruner
    initial_sparsity: 0.1
    final_sparsity: 0.75
    weights: [layer1.0.conv2.weight]
policies:
  - pruner: {instance_name: f}
    epochs: [0]
  - pruner: {instance_name: g}
    epochs: [0, 1]
""")
    torch.manual_seed(0)
    model = resnet20()
    policy = load_policy(path)
    resolve_names(policy, model)
    scheduler = CompressionScheduler(policy, model, (1, 8, 8), 1)
    scheduler.set_segment(model, 0)
    scheduler.fire(0)                   # f, then g at 10 %: alone, g's mask would undo f's
    mask = masks_of(model)["layer1.0.conv2"].mask
    kept = scheduler.keep["layer1.0.conv2"]
    removed = sorted(set(range(16)) - set(kept.tolist()))
    assert len(removed) == 8 and bool((mask[:, removed] == 0).all())       # f's columns
    assert int((mask == 0).sum()) == mask.numel() // 2
    scheduler.fire(1)                   # g at 75 % of the masked weight: f's zeros count in it
    mask = masks_of(model)["layer1.0.conv2"].mask
    assert bool((mask[:, removed] == 0).all())
    assert int((mask == 0).sum()) == round(0.75 * mask.numel())
    assert int((mask[:, kept] == 0).sum()) == round(0.25 * mask.numel())   # g's own zeros
