"""With ``refit_output=False`` the layer that writes the network's output keeps its trained
weights (``compression.selection.criteria.trained_outputs``), on nets of several shapes; by
default it is refit like every other layer."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compression.graph.layers import analyse, choose_layers
from compression.selection.criteria import (SelectionOptions, refit_layers, select_channels,
                                            trained_outputs)
from compression.selection.sampling import layer_weight
from compression.surgery.thinning import mask_inputs
from tests.zoo.nets import ZOO, randomise_bn


class TwoHeads(nn.Module):
    """Two returned heads, one through a per-channel scale, and a hidden linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.hidden = nn.Linear(8, 12)
        self.logits = nn.Linear(12, 10)
        self.aux = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        pooled = self.conv(x).mean((2, 3))
        return self.logits(torch.relu(self.hidden(pooled))), self.aux(pooled) * self.scale


class SoftmaxOut(nn.Module):
    """The classifier's logits pass through log_softmax (it mixes channels) before returning."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3))).log_softmax(1)


@pytest.mark.parametrize("net, expected", [
    *[(name, {"fc"}) for name in ("inception", "se", "grouped", "dense", "shufflenet")],
    ("two_heads", {"logits", "aux"}), ("softmax_out", {"fc"})])
def test_the_layers_writing_the_output_are_marked(net, expected):
    model = {"two_heads": TwoHeads, "softmax_out": SoftmaxOut}.get(net, ZOO.get(net))()
    layers = analyse(model, (1, 8, 8))
    assert {layer.name for layer in layers if layer.writes_output} == expected
    assert trained_outputs(layers, SelectionOptions(refit_output=False)) == expected
    assert trained_outputs(layers, SelectionOptions()) == set()      # the default refits


def _select(model: nn.Module, refit_output: bool) -> tuple[nn.Module, dict, dict]:
    torch.manual_seed(0)
    layers = choose_layers(analyse(model, (1, 8, 8)), True, False, [])
    counts = {layer.name: max(1, layer.in_channels // 2) for layer in layers}
    batches = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    pruned = copy.deepcopy(model)
    cfg = SelectionOptions(refit_output=refit_output)
    keep, stats = select_channels(model, pruned, layers, counts, batches, cfg, seed=0,
                                  trained=trained_outputs(layers, cfg))
    return pruned, keep, {s["layer"]: s for s in stats}


@pytest.mark.parametrize("net", ["se", "inception"])
def test_the_classifier_keeps_its_trained_weights_and_the_others_are_refit(net):
    model = ZOO[net]().eval()
    randomise_bn(model)
    trained = {name: layer_weight(m).clone() for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
    pruned, keep, stats = _select(model, refit_output=False)
    fc = layer_weight(pruned.get_submodule("fc"))
    columns = torch.zeros(fc.shape[1], dtype=torch.bool)
    columns[keep["fc"]] = True
    assert int(columns.sum()) == trained["fc"].shape[1] // 2
    assert torch.equal(fc[:, columns], trained["fc"][:, columns])
    assert fc[:, ~columns].abs().max() == 0
    refit = [name for name in keep if name != "fc"
             and not torch.allclose(layer_weight(pruned.get_submodule(name))[:, keep[name]],
                                    trained[name][:, keep[name]])]
    assert refit, "no other layer was refit"
    assert {name for name, record in stats.items() if not record["refit"]} == {"fc"}

    # refit_output: the same channels, refit weights that reconstruct the logits better
    refitted, keep_refit, stats_refit = _select(model, refit_output=True)
    assert torch.equal(keep_refit["fc"], keep["fc"])
    assert not torch.allclose(layer_weight(refitted.get_submodule("fc"))[:, columns],
                              trained["fc"][:, columns])
    assert stats_refit["fc"]["rel_error"] < stats["fc"]["rel_error"]
    assert all(record["refit"] for record in stats_refit.values())


def test_residual_group_readers_keep_trained_weights_when_told():
    model = ZOO["se"]().eval()
    randomise_bn(model)
    width = layer_weight(model.fc).shape[1]
    keep = {"fc": torch.arange(0, width, 2)}
    batches = [torch.randn(16, 1, 8, 8)]
    results = {}
    for trained in ((), ("fc",)):
        pruned = copy.deepcopy(model)
        mask_inputs(pruned, keep)
        stats = refit_layers(model, pruned, keep, batches, SelectionOptions(), quiet=True,
                             trained=trained)
        results[trained] = (layer_weight(pruned.fc), stats[0]["rel_error"])
        assert stats[0]["refit"] == (not trained)
    kept_trained, error_trained = results[("fc",)]
    kept_refit, error_refit = results[()]
    assert torch.equal(kept_trained[:, keep["fc"]], layer_weight(model.fc)[:, keep["fc"]])
    assert kept_trained[:, 1::2].abs().max() == 0 and kept_refit[:, 1::2].abs().max() == 0
    assert error_refit < error_trained
