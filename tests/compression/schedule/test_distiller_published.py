"""Distiller's published schedules, byte for byte (``tests/data/distiller``, copied from Intel
Labs' Distiller examples): they run or validate unchanged on the project's ResNets, and the ones
that cannot run say why."""
from __future__ import annotations


import pytest
import torch

from compression.graph.layers import analyse
from compression.sparsity.masks import detach_masks
from compression.schedule.names import resolve_names
from compression.schedule.policy import PolicyError, load_policy
from compression.schedule.scheduler import CompressionScheduler
from compression.surgery.thinning import thin
from nets.registry import build_from_spec, net_spec
from tests.conftest import REPO, distiller_resnet20

PUBLISHED = REPO / "tests" / "data" / "distiller"


def write_text(text: str) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    handle.write(text)
    handle.close()
    return handle.name


def published_model(depth: int):
    return distiller_resnet20() if depth == 20 else build_from_spec(net_spec("resnet56", num_classes=10,
                                                                   in_channels=1)).eval()


@pytest.mark.parametrize("name,depth,fire_until,counts", [
    ("resnet56_cifar_filter_rank_v2.yaml", 56, 0,
     {"layer1.0.conv2": 5, "layer2.1.conv2": 13, "layer3.1.conv2": 52, "layer3.2.conv2": 39}),
    ("resnet56_cifar_channel_rank.yaml", 56, 0,
     {"layer1.0.conv1": 5, "layer2.0.shortcut.0": 5, "layer2.1.conv2": 13, "layer3.1.conv2": 52}),
    ("resnet20_filters.schedule_agp.yaml", 20, 30, {"layer2.1.conv1": 16, "layer2.0.conv2": 16}),
    ("resnet20_filters.bn_fold.schedule_agp.yaml", 20, 30, {"layer2.1.conv1": 16, "layer2.0.conv2": 16}),
])
def test_published_structured_schedules_run_unchanged(name, depth, fire_until, counts):
    """Every event up to the thinning epoch, then the thinning: the thinned model computes what
    the masked one did, each reader keeps what Distiller's counts say."""
    model = published_model(depth)
    policy = load_policy(str(PUBLISHED / name))
    resolve_names(policy, model)
    scheduler = CompressionScheduler(policy, model, (1, 8, 8), 1)
    scheduler.set_segment(model, 0)
    thin_index = next(i for i, p in enumerate(policy.policies) if p.kind == "extension")
    for epoch in range(fire_until + 1):
        scheduler.fire(epoch, before=thin_index if epoch == fire_until else None)
    assert {n: len(scheduler.keep[n]) for n in counts} == counts
    inputs = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        masked = model(inputs)
    layers = analyse(model, (1, 8, 8))
    detach_masks(model)
    thinned, _ = thin(model, layers, scheduler.keep)
    with torch.no_grad():   # resnet56 with random weights: outputs up to ~40
        assert float((thinned.eval()(inputs) - masked).abs().max()) <= 1e-6 * float(masked.abs().max()) + 1e-5
    assert sum(p.numel() for p in thinned.parameters()) < sum(p.numel() for p in model.parameters())


def test_published_ssl_and_slimming_files_validate():
    """The SSL file repeats a reg_regims key with the same value (accepted); its regularizer
    runs to epoch 179 and thins then; the slimming file's names are BN weights."""
    model = distiller_resnet20()
    policy = load_policy(str(PUBLISHED / "ssl_channels-removal_training.yaml"))
    mapped = resolve_names(policy, model)
    assert mapped["module.layer3.1.conv2.weight"] == "layer3.1.conv2.weight"
    assert policy.instances["regularizers"]["Channels_groups_regularizer"].params["threshold_criteria"] == \
        "Mean_Abs"
    assert [p.active_epochs()[-1] for p in policy.policies] == [299, 179, 179]
    slimming = load_policy(str(PUBLISHED / "resnet20_slimming.yaml"))
    assert resolve_names(slimming, model)["module.layer1.0.bn2.weight"] == "layer1.0.bn2.weight"


def test_published_files_that_cannot_run_say_why():
    with pytest.raises(PolicyError, match="the name is from Distiller's preact_resnet models"):
        resolve_names(load_policy(str(PUBLISHED / "preact_resnet20_cifar_pact.yaml")), distiller_resnet20())


@pytest.mark.parametrize("criterion", ["APoZ", "Mean"])
def test_published_apoz_schedule_ranks_filters_by_their_feature_maps(criterion):
    """Distiller's network-trimming file (APoZ AGP on resnet56 conv1s, thinning at 20); the
    Mean variant is the same file with the other class. Channels that are always zero after
    their ReLU go first (APoZ 100 %, mean 0)."""
    model = published_model(56)
    with torch.no_grad():       # layer1.0's channels 0..5: never positive after bn1 + relu1
        model.layer1[0].bn1.weight[:6] = 1e-3
        model.layer1[0].bn1.bias[:6] = -5.0
    text = (PUBLISHED / "resnet56_cifar_activation_apoz_v2.yaml").read_text()
    policy = load_policy(write_text(text.replace("ActivationAPoZ", f"Activation{criterion}")))
    resolve_names(policy, model)
    generator = torch.Generator().manual_seed(0)
    scheduler = CompressionScheduler(policy, model, (1, 8, 8), 1,
                                     batches=lambda: [torch.randn(16, 1, 8, 8, generator=generator)])
    scheduler.set_segment(model, 0)
    for epoch in range(1, 20):
        scheduler.fire(epoch)
    kept = scheduler.keep["layer1.0.conv2"].tolist()
    assert len(kept) == 16 - 11                                  # floor(0.7 * 16) at epoch 19
    assert not set(kept) & set(range(6))
    layers = analyse(model, (1, 8, 8))
    inputs = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        masked = model(inputs)
    detach_masks(model)
    thinned, _ = thin(model, layers, scheduler.keep)
    with torch.no_grad():   # resnet56 with random weights: outputs up to ~40
        assert float((thinned.eval()(inputs) - masked).abs().max()) <= 1e-6 * float(masked.abs().max()) + 1e-5
