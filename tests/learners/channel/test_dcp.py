"""dis-chn-pruned (DCP): auxiliary heads on every net with stages and never in the exported
model, the greedy gradient selection, block assignment, and the learner end to end."""
from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

from compression.artifacts import load_model
from compression.graph.layers import analyse
from compression.surgery.picks import GatherLinear
from compression.surgery.thinning import gathers_as_matrices
from compression.selection.dcp import DcpObjective, greedy_channels, layer_blocks
from compression.selection.dcp_heads import StageTaps, build_heads, head_points
from learners.channel.config import DcpConfig
from nets.registry import create_net
from tests.conftest import INPUT_SIZES, compress_digits, digits_helper
from utils.config import ConfigError, from_flag_dict


@pytest.mark.parametrize("name", list(INPUT_SIZES))
def test_heads_attach_to_every_net_with_stages(name):
    size = INPUT_SIZES[name]
    kwargs = {"input_size": size} if name == "lenet" else {}
    model = create_net(name, num_classes=7, in_channels=3, **kwargs).eval()
    stages = list(getattr(model, "stage_names", []))
    points = head_points(model, 3)
    assert len(points) == min(3, len(stages))
    heads = build_heads(model, points, (3, size, size), 7)
    taps = StageTaps(model, points)
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
        for point, head in zip(points, heads.eval()):
            assert head(taps.outputs[point]).shape == (2, 7)
    taps.remove()
    assert not any("head" in key or "aux" in key for key in model.state_dict())


def test_head_points_are_evenly_spaced():
    model = nn.Module()
    model.stage_names = [f"s{i}" for i in range(6)]
    assert head_points(model, 3) == ["s1", "s3", "s5"]
    assert head_points(model, 10) == model.stage_names
    assert head_points(model, 0) == []


def test_layers_are_assigned_to_the_block_that_runs_them():
    model = create_net("resnet20", num_classes=10, in_channels=1)
    layers = analyse(model, (1, 16, 16))
    blocks = layer_blocks(model, layers, ["layer1", "layer2", "layer3"], (1, 16, 16))
    assert blocks["conv1"] == 0 and blocks["layer1.2.conv2"] == 0
    assert blocks["layer2.0.conv1"] == 1 and blocks["layer2.0.shortcut.0"] == 1
    assert blocks["layer3.2.conv2"] == 2 and blocks["fc"] == 3


def test_greedy_selection_finds_the_channels_the_output_depends_on():
    torch.manual_seed(0)
    full = nn.Sequential(nn.Conv2d(6, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        full[0].weight.zero_()
        full[0].weight[:, [1, 3, 4]] = 3.0 * torch.randn(4, 3, 1, 1)
    pruned = nn.Sequential(nn.Conv2d(6, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        pruned[0].weight.copy_(full[0].weight + 0.01 * torch.randn(4, 6, 1, 1))
    objective = DcpObjective(pruned, full, nn.ModuleList(), [], nn.functional.cross_entropy and
                             (lambda y, out: (nn.functional.cross_entropy(out, y), {})))
    objective.set_stage(0, "0", bn_train=False)
    batches = [(torch.randn(32, 6, 5, 5), torch.randint(0, 4, (32,))) for _ in range(3)]
    keep = greedy_channels(objective, "0", 3, batches)
    objective.close()
    assert keep.tolist() == [1, 3, 4]


def _greedy_reference(objective, name, nb_keep, batches):
    """The selection as first written: the full net's output and the whole autograd graph
    recomputed at every addition, one channel per pass."""
    from compression.selection.dcp import _override_weight

    module = objective.pruned.get_submodule(name)
    weight = module.weight.detach().clone()
    chosen = torch.zeros(weight.shape[1], dtype=torch.bool)
    objective.eval()
    for step in range(nb_keep):
        inputs, labels = batches[step % len(batches)]
        leaf = (weight * chosen.reshape(1, -1, 1, 1)).requires_grad_(True)
        handle = _override_weight(module, leaf)
        loss, _ = objective.loss(labels, objective(inputs))
        (grad,) = torch.autograd.grad(loss, leaf)
        handle.remove()
        score = grad.pow(2).sum(dim=(0, 2, 3))
        score[chosen] = -float("inf")
        chosen[int(score.argmax())] = True
    return chosen.nonzero().flatten()


def test_greedy_selection_with_cached_targets_is_the_papers_selection():
    torch.manual_seed(0)
    full = create_net("resnet20", num_classes=10, in_channels=1).eval()
    pruned = create_net("resnet20", num_classes=10, in_channels=1)
    pruned.load_state_dict(full.state_dict())
    with torch.no_grad():
        pruned.layer2[1].conv1.weight.add_(0.05 * torch.randn_like(pruned.layer2[1].conv1.weight))
    points = head_points(pruned, 3)
    heads = build_heads(pruned, points, (1, 8, 8), 10)
    loss = lambda y, out: (nn.functional.cross_entropy(out, y), {})  # noqa: E731
    objective = DcpObjective(pruned, full, heads, points, loss)
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(3)]
    objective.set_stage(1, "layer2.1.conv1", bn_train=False)
    objective._stop.remove()                  # as first written: through the whole network
    reference = _greedy_reference(objective, "layer2.1.conv1", 12, batches)
    objective.set_stage(1, "layer2.1.conv1", bn_train=False)
    after_head = []
    handle = pruned.layer3.register_forward_pre_hook(lambda *_: after_head.append(1))
    fast = greedy_channels(objective, "layer2.1.conv1", 12, batches)
    handle.remove()
    assert after_head == []                   # the passes stopped at the block's head point
    assert fast.tolist() == reference.tolist()
    assert all(p.requires_grad for p in pruned.parameters())       # unfrozen afterwards
    several = greedy_channels(objective, "layer2.1.conv1", 12, batches, per_pass=4)
    objective.close()
    assert len(several) == 12 and len(set(several.tolist()) & set(reference.tolist())) >= 8


@pytest.mark.parametrize("field,value", [("dcp_prune_ratio", 1.0), ("dcp_nb_stages", -1),
                                         ("dcp_lrn_rate_adam", 0.0), ("dcp_nb_batches", 0),
                                         ("dcp_nb_iters_block", -2), ("dcp_channels_per_pass", 0)])
def test_bad_options_name_the_flag(field, value):
    with pytest.raises(ConfigError, match=f"^--{field}:"):
        from_flag_dict(DcpConfig, {field: value}, prefix="dcp")
    with pytest.raises(ConfigError, match=f"^--{field[4:]}:"):
        DcpConfig(**{field[4:]: value})


def test_learner_keeps_exact_counts_and_exports_no_heads(tmp_path, tiny_pretrained):
    result = compress_digits(tmp_path, tiny_pretrained, "dis-chn-pruned", prune_ratio=0.5,
                             nb_iters_block=3, nb_iters_layer=2, nb_batches=2)
    report = result.report
    saved = json.load(open(tmp_path / "dis-chn-pruned" / "report.json"))
    model, artifact = load_model(result.artifact)
    full, _ = load_model(str(tmp_path / "eval" / "model.ckpt"))
    selected = {record["layer"]: record for record in saved["selection"]}
    assert len(selected) == 21 and "conv1" not in selected        # first layer skipped
    assert {r["block"] for r in selected.values()} == {0, 1, 2, 3}
    for name, record in selected.items():
        width = full.get_submodule(name).weight.shape[1]
        assert record["kept"] == max(1, int(width * 0.5)), name
        assert model.get_submodule(name).weight.shape[1] == record["kept"], name
    # the heads are gone: no parameter of the artifact belongs to them, and the ONNX graph
    # has exactly one classifier (the network's own fc) and one output
    assert set(model.state_dict()) == set(artifact["state_dict"])
    assert not any("head" in key or "aux" in key for key in artifact["state_dict"])
    graph = onnx.load(saved["onnx"]["path"]).graph
    assert len(graph.output) == 1
    # (a gathered fc is deployed folded into one product, or behind a one-hot pick when that
    # has fewer weights: a second product)
    deployed = gathers_as_matrices(model, digits_helper().input_shape)
    one_hot_fc = int(isinstance(deployed.fc, torch.nn.Sequential))
    assert isinstance(model.fc, GatherLinear) or not one_hot_fc
    assert sum(node.op_type in ("Gemm", "MatMul") for node in graph.node) == 1 + one_hot_fc
    assert saved["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, saved["onnx"]["max_abs_output"])
    assert report["flops"]["compressed"] < 0.5 * report["flops"]["full"]
