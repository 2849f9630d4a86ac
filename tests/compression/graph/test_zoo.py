"""Channel pruning on user-style nets defined only in tests/zoo/nets.py: concatenated
branches, squeeze-and-excitation, grouped convs, a DenseNet block, 1-D convs, channel split
with a transposed conv. Thinning must be exact, count its FLOPs like torch's flop counter,
leave no output channel that nothing reads, and export no larger than the unpruned net."""
from __future__ import annotations

import copy
import logging
import os

import pytest
import torch
from torch import nn

from compression.graph import layers as layers_module, pruners as layer_pruners
from compression.artifacts import build_model
from compression.budget.flops import ChannelFlops
from compression.graph.layers import analyse
from compression.graph.pruners import ChannelwisePruner, register_pruner
from compression.surgery.thinning import gathers_as_matrices, mask_inputs, thin
from compression.surgery.dead_channels import unread_outputs
from compression.surgery.unread import WRITERS, wasted_flops
from tests.zoo.nets import (DEAD_AFTER_PLAN, INPUT_SHAPE, LATE_MEMBERS, ZOO, Scale, ScaledNet,
                            pruned, unread_channels)
from utils.model_io import module_spec
from utils.model_stats import count_flops, count_params


@pytest.mark.parametrize("name", list(ZOO))
def test_thinning_is_exact_and_counted(name):
    model, layers, keep = pruned(name)
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep, layers)
    spec = module_spec(model)
    dead = {}
    thinned, thin_spec = thin(masked, layers, keep, spec, stats=dead)
    plain, _ = thin(masked, layers, keep, eliminate=False)    # the channel graph's plan alone
    x = torch.randn(5, *INPUT_SHAPE)
    with torch.no_grad():
        for mode in ("eval", "train"):                   # BN batch statistics included
            getattr(masked, mode)(), getattr(thinned, mode)()
            expected, got = masked(x), thinned(x)
            assert (expected - got).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())
        rebuilt = build_model(thin_spec, base=ZOO[name]())
        rebuilt.load_state_dict(thinned.state_dict())
        assert torch.equal(rebuilt.eval()(x), thinned.eval()(x))
    flops = ChannelFlops(model, layers, INPUT_SHAPE)
    actual = count_flops(plain, INPUT_SHAPE)
    assert flops.flops_of(keep) == actual
    eliminated = count_flops(thinned, INPUT_SHAPE)
    assert (eliminated < actual) == bool(dead["removed"]) and eliminated <= actual
    assert dead["flops_before"] == actual and dead["flops_after"] == eliminated
    estimate = flops.flops({n: len(k) for n, k in keep.items()})
    if name in ("inception", "split"):    # a concatenation's split among its producers is
        assert abs(actual - estimate) <= 0.1 * estimate    # known after selection only
    else:
        assert actual <= estimate
    assert estimate < flops.total
    assert count_params(thinned) < count_params(model)


@pytest.mark.parametrize("name", list(ZOO))
def test_unread_channels_are_measured_and_left_only_where_removing_costs_more(name):
    model, layers, keep = pruned(name)
    assert unread_channels(model, INPUT_SHAPE) == {}
    dead = {}
    thinned, _ = thin(model, layers, keep, stats=dead)
    probe = unread_channels(thinned, INPUT_SHAPE)          # perturbation: independent of the graph
    assert probe == unread_outputs(thinned, INPUT_SHAPE)              # liveness agrees with it
    assert dead["checked_by"] == "liveness" and dead["unknown_ops"] == []
    assert dead["unread_channels"] == sum(probe.values())
    assert probe == dead["not_worth"]      # left only where the scatter costs more (_pays)
    # without the elimination pass, the residual sums' late members compute channels that
    # only readers before the sum keep: counted alike by the probe and by the liveness pass
    plain, _ = thin(model, layers, keep, eliminate=False)
    unread = unread_channels(plain, INPUT_SHAPE)
    assert unread == unread_outputs(plain, INPUT_SHAPE)
    if name not in LATE_MEMBERS:
        assert (unread != {}) == (name in DEAD_AFTER_PLAN)
        return
    member, late_readers = LATE_MEMBERS[name]
    graph = layers[0].graph
    late = set()
    for reader in late_readers:
        ids = graph.read_ids(reader)
        late |= {graph.find(ids[p]) for p in keep[reader].tolist()}
    alive = graph.survivors(keep)
    written = {graph.find(i) for i in graph.writers[member]} & alive
    assert written - late and unread == {member: len(written - late)}


@pytest.mark.parametrize("name", list(ZOO))
def test_wasted_flops_price_each_module_like_the_flop_counter(name):
    model = ZOO[name]().eval()
    writers = {n: m.weight.shape[1 if isinstance(m, nn.ConvTranspose2d) else 0]
               for n, m in model.named_modules() if isinstance(m, WRITERS)}
    # every output channel of every module unread: the whole model's FLOPs
    assert wasted_flops(model, INPUT_SHAPE, writers) == count_flops(model, INPUT_SHAPE)


def test_graph_patterns_of_the_zoo():
    layers = {n: {layer.name: layer for layer in analyse(ZOO[n](), INPUT_SHAPE)} for n in ZOO}
    # concatenation read by one conv: its kept inputs shrink every branch
    mix = layers["inception"]["mix.0"]
    assert mix.mode == "chain" and mix.producer is None
    assert mix.followers == ["b3.1.1", "b2.1.1", "b1.1"]
    # SE: the gate's first layer follows the trunk, the projection shrinks the expansion
    se = layers["se"]
    assert "se.fc1" not in se and se["project.0"].producer == "expand.0"
    assert se["project.0"].followers == ["dw.1", "dw.0", "expand.1"]
    assert se["se.fc2"].mode == "chain" and se["se.fc2"].producer == "se.fc1"
    # a grouped conv (4 groups of 4) is pruned by whole groups: its reader keeps blocks of 4
    # columns, and the conv, its BN and the reduce conv before it shrink with them
    expand = layers["grouped"]["expand.0"]
    assert expand.mode == "chain" and expand.producer is None
    assert expand.followers == ["grouped.1", "grouped.0", "reduce.1"]
    assert expand.blocks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert "grouped.0" not in layers["grouped"]
    # DenseNet: every concatenated feature map is read by all later layers
    assert all(layer.mode == "gather" for n, layer in layers["dense"].items() if n != "fc")
    # 1-D: PReLU and the per-channel GroupNorm shrink with their channels
    assert layers["conv1d"]["conv_b.0"].followers == ["conv_a.2", "conv_a.1"]
    assert layers["conv1d"]["fc"].followers == ["down.1"]
    # channel split: the code cuts the stem at fixed widths, so its channels stay whole (the
    # branch is not pruned); the transposed conv shrinks as the producer of the strided conv
    split = layers["split"]
    assert "branch.0" not in split and "up.0" not in split
    assert split["down.0"].mode == "chain" and split["down.0"].producer == "up.0"


def test_concat_and_se_shrink_their_producers():
    model, layers, _ = pruned("inception")
    keep = {"mix.0": torch.tensor([0, 1, 2, 10, 11, 23])}    # b1: 0-7, b2: 8-19, b3: 20-23
    thinned, _ = thin(model, layers, keep)
    assert thinned.b1[0].out_channels == 3 and thinned.b2[1][0].out_channels == 2
    assert thinned.b3[1][0].out_channels == 1 and thinned.mix[0].in_channels == 6
    model, layers, _ = pruned("se")
    keep = {"project.0": torch.arange(0, 32, 4)}
    thinned, _ = thin(model, layers, keep)
    assert thinned.expand[0].out_channels == thinned.dw[0].groups == 8
    assert thinned.se.fc1.in_features == thinned.se.fc2.out_features == 8


@pytest.mark.parametrize("name", list(ZOO))
def test_exports_are_no_larger_than_the_unpruned(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from deployment.onnx_export import export_onnx, onnx_max_abs_diff

    model, layers, keep = pruned(name, ratio=0.75)
    thinned, _ = thin(model, layers, keep)
    sizes = {}
    x = torch.randn(3, *INPUT_SHAPE)
    for side, net in (("full", model), ("pruned", thinned)):
        path = export_onnx(gathers_as_matrices(net, INPUT_SHAPE).eval(), INPUT_SHAPE,
                           str(tmp_path / f"{side}.onnx"))
        sizes[side] = os.path.getsize(path)
        assert onnx_max_abs_diff(path, net.eval(), x) <= 1e-4
    assert sizes["pruned"] <= sizes["full"]


def test_a_users_layer_type_is_kept_whole_until_it_has_a_pruner(monkeypatch, caplog):
    monkeypatch.setattr(layer_pruners, "_PRUNERS", list(layer_pruners._PRUNERS))
    monkeypatch.setattr(layers_module, "_LOGGED", set())
    torch.manual_seed(0)
    model = ScaledNet().eval()
    layers = {layer.name: layer for layer in analyse(model, INPUT_SHAPE)}
    assert "b" not in layers                 # the parameter's view keeps a's channels whole
    keep = {"b": torch.tensor([1, 4, 6])}

    @register_pruner(Scale)
    class ScalePruner(ChannelwisePruner):
        params = ("weight",)
        size_attrs = ("channels",)

    with caplog.at_level(logging.INFO, logger="pocketflow"):
        layers = {layer.name: layer for layer in analyse(model, INPUT_SHAPE)}
    assert layers["b"].mode == "chain" and layers["b"].followers == ["scale"]
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep)
    thinned, _ = thin(model, list(layers.values()), keep)
    assert thinned.a.out_channels == thinned.scale.channels == 3
    x = torch.randn(2, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(thinned(x), masked(x), atol=1e-6)


def test_an_unregistered_torch_layer_is_named_and_kept_whole(monkeypatch, caplog):
    monkeypatch.setattr(layers_module, "_LOGGED", set())
    class WithLstm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 6, 3, padding=1)
            self.rnn = nn.RNN(6, 5, batch_first=True)
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            y, _ = self.rnn(self.conv(x.flatten(2)).transpose(1, 2))
            return self.fc(y[:, -1])

    with caplog.at_level(logging.INFO, logger="pocketflow"):
        layers = {layer.name: layer for layer in analyse(WithLstm(), INPUT_SHAPE)}
        analyse(WithLstm(), INPUT_SHAPE)
    assert "rnn: RNN (no pruner registered; registered:" in caplog.text
    assert caplog.text.count("rnn: RNN") == 1                     # logged once by name
    thinned, _ = thin(WithLstm(), list(layers.values()), {"fc": torch.tensor([0, 2])})
    assert thinned.conv.out_channels == 6
