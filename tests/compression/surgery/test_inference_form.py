"""compression.surgery.inference.fold_batchnorm on user-style nets (tests/zoo/nets.py: concatenations,
squeeze-and-excitation, grouped convs, a DenseNet block, 1-D convs, a channel split with a
transposed conv), unpruned and thinned (gathers and scatters): the same eval outputs, fewer
BatchNorm modules, and every BN that could not be folded left as it was."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compression.surgery.picks import is_gather, is_scatter
from compression.surgery.inference import fold_batchnorm, following_bn
from compression.surgery.thinning import mask_inputs, thin
from compression.surgery import dead_channels
from tests.zoo.nets import INPUT_SHAPE, LATE_MEMBERS, ZOO, pruned

NORMS = nn.modules.batchnorm._BatchNorm


def _norms(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, NORMS)}


def _check(model: nn.Module) -> nn.Module:
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(6, *INPUT_SHAPE)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert (expected - got).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())
    pairs = following_bn(model)
    assert _norms(folded) == _norms(model) - set(pairs.values())
    for layer, bn in pairs.items():
        assert isinstance(folded.get_submodule(bn), nn.Identity)
        assert folded.get_submodule(layer).bias is not None
    assert model.training is False
    return folded


@pytest.mark.parametrize("name", list(ZOO))
def test_folded_nets_compute_the_same(name):
    model, _, _ = pruned(name)
    folded = _check(model)
    if name in ("dense", "convnext", "functional"):  # pre-activation BNs, or none at all
        assert _norms(folded) == _norms(model)
    else:
        assert len(_norms(folded)) < len(_norms(model))


@pytest.mark.parametrize("name", list(ZOO))
def test_folded_thinned_nets_compute_the_same(name, monkeypatch):
    monkeypatch.setattr(dead_channels, "_pays", lambda *args: True)   # every scatter placed
    model, layers, keep = pruned(name)
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep, layers)
    thinned, _ = thin(masked, layers, keep)
    folded = _check(thinned)
    # a scatter BN (where dead-channel elimination placed one) hands its placement to its conv
    scattering = [n for n, m in thinned.named_modules() if is_scatter(m) and isinstance(m, NORMS)]
    assert all(is_scatter(folded.get_submodule(layer))
               for layer, bn in following_bn(thinned).items() if bn in scattering)
    if name in LATE_MEMBERS:
        assert scattering
    assert any(is_gather(m) for m in folded.modules()) == any(is_gather(m) for m in thinned.modules())


def test_bn_that_cannot_be_folded_is_kept():
    """After a sum, without running statistics, after a layer whose output has two readers."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 1)
            self.after_sum = nn.BatchNorm2d(4)
            self.c = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.batch_stats = nn.BatchNorm2d(4, track_running_stats=False)
            self.d = nn.Conv2d(4, 4, 1)
            self.shared = nn.BatchNorm2d(4)
            self.e = nn.Conv2d(4, 4, 1)
            self.folds = nn.BatchNorm2d(4, affine=False)

        def forward(self, x):
            y = self.after_sum(self.a(x) + self.b(x))
            y = self.batch_stats(self.c(y))
            d = self.d(y)
            y = self.shared(d) + d
            return self.folds(self.e(y))

    torch.manual_seed(0)
    net = Net().eval()
    for bn in (net.after_sum, net.shared, net.folds):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(net)
    assert _norms(folded) == {"after_sum", "batch_stats", "shared"}
    x = torch.randn(3, 2, 5, 5)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
