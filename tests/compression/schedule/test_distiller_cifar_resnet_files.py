"""Every schedule Distiller publishes for its CIFAR ResNets, as copied to ``examples/distiller/``
(epochs scaled, nothing else changed), loads and checks against its model before training, or is
refused for a reason about the method; and the inner ``.module.`` name rule."""
from __future__ import annotations

import re

import pytest
import torch

from compression.schedule.names import candidates, resolve_names
from compression.schedule.policy import PolicyError, check_epochs, load_policy
from compression.schedule.scheduler import CompressionScheduler
from nets.registry import create_net
from tests.conftest import REPO

EXAMPLES = REPO / "examples" / "distiller"
# copy in examples/distiller -> the registered net it targets (its header / arch)
RUNS = {
    "resnet20_filters.schedule_agp.yaml": "resnet20_cifar",
    "resnet20_filters.bn_fold.schedule_agp.yaml": "resnet20_cifar",
    "resnet20_filters.schedule_agp_2.yaml": "resnet20_cifar",
    "resnet20_filters.schedule_agp_3.yaml": "resnet20_cifar",
    "resnet20_filters.schedule_agp_4.yaml": "resnet20_cifar",
    "resnet20_slimming_published.yaml": "resnet20_cifar",
    "resnet20.network_surgery.yaml": "resnet20_cifar",
    "gss_channels-removal_training.yaml": "resnet20_cifar",
    "resnet56_cifar_activation_apoz.yaml": "resnet56_cifar",
    "resnet56_cifar_activation_apoz_v2.yaml": "resnet56_cifar",
    "resnet56_cifar_baseline_training.yaml": "resnet56_cifar",
    "resnet56_cifar_channel_rank.yaml": "resnet56_cifar",
    "resnet56_cifar_filter_rank.yaml": "resnet56_cifar",
    "resnet56_cifar_filter_rank_v2.yaml": "resnet56_cifar",
    "preact_resnet_cifar_base_fp32.yaml": "preact_resnet20_cifar",
    "preact_resnet20_cifar_pact.yaml": "preact_resnet20_cifar",
    "preact_resnet_cifar_dorefa.yaml": "preact_resnet20_cifar",
    "quant_aware_train_linear_quant.yaml": "resnet20_cifar",   # model-agnostic
    "resnet20_cifar_baseline_training.yaml": "resnet20_cifar",
    "ssl_4D-removal_finetuning.yaml": "resnet20_cifar",
    "ssl_4D-removal_training.yaml": "resnet20_cifar",
    "ssl_channels-removal_finetuning.yaml": "resnet20_cifar",
    "ssl_channels-removal_finetuning_x1.8.yaml": "resnet20_cifar",
    "ssl_channels-removal_training.yaml": "resnet20_cifar",
    "ssl_channels-removal_training_x1.8.yaml": "resnet20_cifar",
    "ssl_filter-removal_training.yaml": "resnet20_cifar",
}
# refused at load, for the method (the class's meaning cannot be honoured)
REFUSED = {
    "resnet20_cifar_randomlevel_training.yaml": "RandomLevelStructureParameterPruner is not supported",
}
_MODELS: dict = {}


def model_of(net: str) -> torch.nn.Module:
    if net not in _MODELS:
        torch.manual_seed(0)
        _MODELS[net] = create_net(net, num_classes=10, in_channels=1).eval()
    return _MODELS[net]


def test_every_published_cifar_resnet_file_is_copied():
    assert all((EXAMPLES / name).is_file() for name in [*RUNS, *REFUSED])
    for name in RUNS:   # the copies say where they come from and what was scaled
        if name != "quant_aware_train_linear_quant.yaml":
            assert (EXAMPLES / name).read_text().startswith("# Distiller's examples/")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_published_cifar_resnet_file_checks_against_its_model(name):
    """What the schedule learner checks before training: the file, every name against the
    model as written (only ``module.`` dropped), the epochs, and the scheduler's set-up."""
    model = model_of(RUNS[name])
    policy = load_policy(str(EXAMPLES / name))
    mapped = resolve_names(policy, model)
    assert all(new == re.sub(r"^(module\.)+", "", old) for old, new in mapped.items()), mapped
    check_epochs(policy, policy.last_epoch + 1)
    CompressionScheduler(policy, model, (1, 16, 16), 1)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_published_cifar_resnet_files_that_are_refused_say_why(name):
    with pytest.raises(PolicyError, match=REFUSED[name]):
        load_policy(str(EXAMPLES / name))


def test_inner_module_component_is_dropped(tmp_path):
    """Distiller wraps only a VGG's ``features`` in DataParallel: ``features.module.N``."""
    assert "features.0.weight" in candidates("module.features.module.0.weight", {})
    assert "features.0.weight" in candidates("features.module.0.weight", {})
    model = create_net("vgg11_cifar", num_classes=10, in_channels=1, input_size=32)
    text = """version: 1
pruners:
  p:
    class: L1RankedStructureParameterPruner
    group_type: Filters
    desired_sparsity: 0.5
    weights: [module.features.module.0.weight, features.module.3.weight]
quantizers:
  q:
    class: DorefaQuantizer
    bits_activations: 8
    bits_weights: 4
    overrides:
      features\\.module\\.0:
        bits_weights: null
policies:
  - pruner:
      instance_name: p
    epochs: [0]
  - quantizer:
      instance_name: q
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
"""
    (tmp_path / "vgg.yaml").write_text(text)
    policy = load_policy(str(tmp_path / "vgg.yaml"))
    mapped = resolve_names(policy, model)
    assert mapped["module.features.module.0.weight"] == "features.0.weight"
    assert mapped["features.module.3.weight"] == "features.3.weight"
    assert mapped["features\\.module\\.0"] == "features\\.0"


def test_arch_hint_only_for_a_model_without_those_names(tmp_path):
    """A VGG name missing from a VGG model is not "from another family"; on a ResNet it is,
    and the error names the registered net."""
    def policy_for(weight: str):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(f"""version: 1
pruners:
  p:
    class: AutomatedGradualPruner
    initial_sparsity: 0.1
    final_sparsity: 0.5
    weights: [{weight}]
policies:
  - pruner:
      instance_name: p
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
""")
        return load_policy(str(path))

    vgg = create_net("vgg11_cifar", num_classes=10, in_channels=1, input_size=32)
    with pytest.raises(PolicyError) as missing:
        resolve_names(policy_for("module.features.module.99.weight"), vgg)
    assert "vgg / alexnet" not in str(missing.value)
    assert "also tried 'features.99.weight'" in str(missing.value)
    with pytest.raises(PolicyError, match=r"vgg / alexnet models.*--net=vgg16_cifar"):
        resolve_names(policy_for("module.features.module.0.weight"), model_of("resnet20_cifar"))


def test_group_variance_is_distillers_strength_over_the_variance_of_channel_norms():
    """``GroupVarianceRegularizer`` (Distiller's group_regularizer.py:190-202): ``strength /
    var(channels_l2)`` with ``channels_l2`` the L2 norm of each input channel (+1e-8)."""
    from compression.schedule.regularizers import REGULARIZERS

    conv = torch.nn.Conv2d(4, 6, 3)
    weight = conv.weight.detach()
    # Distiller's _channels_l2: kernels' sums of squares, a (filters, channels) matrix, transposed
    sums = weight.reshape(-1, 9).pow(2).sum(dim=1).view(6, 4).t().sum(dim=1)
    expected = 0.1 / (sums + 1e-8).sqrt().var()
    model = torch.nn.Sequential(conv)
    loss = REGULARIZERS["GroupVarianceRegularizer"](model, {"reg_regims": {"0.weight": [0.1, "Channels"]}})
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
