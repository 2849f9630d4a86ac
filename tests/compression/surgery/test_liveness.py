"""Liveness (compression.surgery.liveness) and the dead-channel report on the ops that used to
fool it: an in-place op on a residual member, a channel shuffle, an op without a rule. The
count in the report is checked against the perturbation probe, which knows no graph."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.graph.layers import analyse, choose_layers
from compression.surgery import dead_channels
from compression.surgery.thinning import mask_inputs, thin
from compression.surgery.unread import unread_channels
from tests.zoo.modern import FunctionalNet, ShuffleNetNet
from tests.zoo.nets import INPUT_SHAPE, randomise_bn
from utils.model_stats import count_flops


class OutOfPlace(FunctionalNet):
    """FunctionalNet with ``out = out * 0.5`` where it has ``out.mul_(0.5)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = x + F.relu(self.conv2(x))
        x = x + self.conv3(x) * 0.5
        x = F.relu(self.conv4(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Cumsum(nn.Module):
    """A channel op no rule covers (``torch.cumsum`` over channels) before a narrow reader."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = x + torch.cumsum(self.b(x), 1)
        return self.head(x).mean((2, 3))


def thinned_at_half(cls, eliminate: bool = True, seed: int = 1):
    torch.manual_seed(0)
    model = cls().eval()
    randomise_bn(model)
    layers = analyse(model, INPUT_SHAPE)
    gen = torch.Generator().manual_seed(seed)
    keep = {layer.name: torch.randperm(layer.in_channels, generator=gen)[:layer.in_channels // 2]
            for layer in choose_layers(layers, True, False, [])}
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep, layers)
    dead = {}
    thinned, _ = thin(masked, layers, keep, stats=dead, eliminate=eliminate)
    x = torch.randn(4, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(thinned(x), masked(x), atol=1e-5)
    return thinned, dead


def test_an_inplace_op_on_a_residual_member_is_followed_like_its_out_of_place_form():
    plain, _ = thinned_at_half(FunctionalNet, eliminate=False)
    unread = unread_channels(plain, INPUT_SHAPE)
    assert unread and unread == dead_channels.unread_outputs(plain, INPUT_SHAPE)
    inplace, dead = thinned_at_half(FunctionalNet)
    outplace, dead_out = thinned_at_half(OutOfPlace)
    assert count_flops(inplace, INPUT_SHAPE) == count_flops(outplace, INPUT_SHAPE)
    assert dead["removed"] == dead_out["removed"] and dead["removed"]
    assert dead["unread_channels"] == sum(unread_channels(inplace, INPUT_SHAPE).values())


def test_a_channel_shuffle_is_followed_channel_by_channel():
    plain, dead = thinned_at_half(ShuffleNetNet, eliminate=False)
    unread = unread_channels(plain, INPUT_SHAPE)
    assert sum(unread.values()) >= 10                 # readers after the shuffle keep half
    assert dead_channels.liveness_of(plain, INPUT_SHAPE) == (unread, [])
    assert dead["unread_channels"] == sum(unread.values()) and dead["checked_by"] == "liveness"


def test_an_op_without_a_rule_is_named_and_the_count_is_measured_by_perturbation(monkeypatch):
    plain, dead = thinned_at_half(Cumsum, eliminate=False)
    assert dead["unknown_ops"] == ["torch.cumsum"]
    assert dead["not_followed"] == ["torch.cumsum"] and dead["checked_by"] == "perturbation"
    assert dead["unread_channels"] == sum(unread_channels(plain, INPUT_SHAPE).values())
    monkeypatch.setattr(dead_channels, "PROBE_FLOPS", 0)         # too costly to probe: unknown
    report = dead_channels.report(plain, plain, INPUT_SHAPE)
    assert report["unread_channels"] is None and report["checked_by"] is None


@pytest.mark.parametrize("cls", [FunctionalNet, ShuffleNetNet])
def test_removed_channels_are_what_liveness_counted_before(cls):
    plain, _ = thinned_at_half(cls, eliminate=False)
    _, dead = thinned_at_half(cls)
    before = dead_channels.unread_outputs(plain, INPUT_SHAPE)
    for writer, count in dead["removed"].items():
        assert 0 < count <= before[writer]
    left = sum(before.values()) - sum(dead["removed"].values())
    assert dead["unread_channels"] == left == sum(dead["not_worth"].values())


def test_a_branch_nothing_reads_leaves_its_inputs_unread_too():
    """The mix layer of the Inception block keeps none of branch b1's channels: b1 computes
    nothing anyone reads, so the stem channels only b1 reads are unread as well."""
    from tests.zoo.nets import InceptionNet

    torch.manual_seed(0)
    model = InceptionNet().eval()
    randomise_bn(model)
    layers = analyse(model, INPUT_SHAPE)
    keep = {"b1.0": torch.arange(0, 8), "b2.0.0": torch.arange(8, 16),
            "b3.1.0": torch.arange(8, 16), "mix.0": torch.arange(8, 24)}
    keep = {name: index for name, index in keep.items() if name in {layer.name for layer in layers}}
    plain, _ = thin(model, layers, keep, eliminate=False)
    probe = unread_channels(plain, INPUT_SHAPE)
    assert probe.get("b1.0") and probe.get("stem.0")        # the branch, and what only it reads
    assert dead_channels.liveness_of(plain, INPUT_SHAPE) == (probe, [])
