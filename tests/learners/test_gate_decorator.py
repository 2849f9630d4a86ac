"""gate-decorator: gated BNs, Taylor importance, global pruning to a FLOPs target, melting into
a thinned model, and the learner end to end on digits."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from compression.budget.flops import ChannelFlops
from compression.selection.gates import (GatedBatchNorm2d, GlobalGatePruner, attach_gates, gate_l1,
                                         gate_points, gates_of, melt_gates)
from compression.graph.layers import analyse
from compression.surgery.thinning import thin
from learners.launch import run
from nets import resnet_at_digits
from nets.registry import build_from_spec, net_spec
from tests.conftest import digits_helper
from tests.conftest import flag_values
from utils.config import ConfigError
from utils.lrn_rate import TriangularLr
from compression.artifacts import load_model
from utils.model_stats import count_flops

SHAPE = (1, 8, 8)


def resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = build_from_spec(net_spec("resnet20", num_classes=10, in_channels=1))
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_gates_sit_only_where_channels_feed_one_layer():
    model = resnet20()
    points = gate_points(model, analyse(model, SHAPE))
    # the first BN of every residual block gates the block's inner channels; the BNs whose
    # channels enter a residual sum (bn2, shortcut, stem) get no gate
    assert points == {f"layer{s}.{b}.bn1": f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3)}
    assert gate_points(model, analyse(model, SHAPE), skip=["layer3"]).keys() == {
        f"layer{s}.{b}.bn1" for s in (1, 2) for b in range(3)}


def test_gating_keeps_the_function_and_moves_the_scale_into_the_gate():
    model = resnet20()
    x = torch.randn(4, *SHAPE)
    before = model(x)
    gamma = model.layer1[0].bn1.weight.detach().clone()
    gates = attach_gates(model, ["layer1.0.bn1", "layer2.1.bn1"])
    assert isinstance(model.layer1[0].bn1, GatedBatchNorm2d)
    assert torch.equal(gates["layer1.0.bn1"].g.detach(), gamma)
    assert torch.equal(model.layer1[0].bn1.bn.weight, torch.ones(16))
    assert not model.layer1[0].bn1.bn.weight.requires_grad
    assert (model(x) - before).abs().max() < 1e-5
    expected = gamma.abs().sum() + model.layer2[1].bn1.g.detach().abs().sum()
    assert float(gate_l1(model).detach()) == pytest.approx(float(expected), rel=1e-6)


def test_taylor_score_is_the_sum_over_batches_of_grad_times_gate():
    model = resnet20().train()
    gate = attach_gates(model, ["layer1.0.bn1"])["layer1.0.bn1"]
    gate.collect_scores(True)
    expected = torch.zeros(16)
    for seed in range(3):
        torch.manual_seed(seed)
        x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        expected += (gate.g.grad * gate.g.detach()).abs()
    gate.collect_scores(False)
    assert torch.allclose(gate.score, expected, rtol=1e-5, atol=1e-9)
    model.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(8, *SHAPE)), torch.zeros(8, dtype=torch.long)).backward()
    assert torch.allclose(gate.score, expected, rtol=1e-5, atol=1e-9)  # hook removed: no change


def test_melted_and_thinned_model_computes_what_the_gated_one_does():
    model = resnet20()
    layers = analyse(model, SHAPE)
    points = gate_points(model, layers)
    gated = resnet20()
    attach_gates(gated, list(points))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for gate in gates_of(gated).values():
            gate.g.mul_(torch.rand(gate.g.shape, generator=gen) + 0.5)
            gate.mask[torch.randperm(len(gate.mask), generator=gen)[: len(gate.mask) // 2]] = 0
    x = torch.randn(16, *SHAPE)
    expected = gated(x)
    keep = melt_gates(gated, points)
    assert not gates_of(gated)
    assert set(keep) == set(points.values())
    assert all(len(keep[layer]) == (16 if layer.startswith("layer1") else 32 if layer.startswith("layer2")
                                    else 64) // 2 for layer in keep)
    thinned, _ = thin(gated, layers, keep)
    assert thinned.layer1[0].conv1.weight.shape == (8, 16, 3, 3)
    assert thinned.layer3[2].conv2.weight.shape == (64, 32, 3, 3)
    assert (thinned.eval()(x) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("net", ["mobilenet_v1", "mobilenet_v2"])
def test_melting_is_exact_through_depthwise_convs(net):
    """The gate sits on the last BN before the consumer: a closed channel reaches it as an exact
    zero even with a depthwise conv (and its BN bias) in between."""
    torch.manual_seed(0)
    model = build_from_spec(net_spec(net, num_classes=10, small_input=True)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.5, 0.5)
    shape = (3, 16, 16)
    layers = analyse(model, shape)
    points = gate_points(model, layers)
    assert len(points) == {"mobilenet_v1": 14, "mobilenet_v2": 20}[net]
    attach_gates(model, list(points))
    with torch.no_grad():
        for gate in gates_of(model).values():
            gate.mask[: len(gate.mask) // 2] = 0
    x = torch.randn(4, *shape)
    expected = model(x).detach()
    thinned, _ = thin(model, layers, melt_gates(model, points))
    assert (thinned.eval()(x) - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_global_pruner_stops_at_the_flops_target_and_keeps_the_minimum():
    model = resnet20()
    layers = analyse(model, SHAPE)
    points = gate_points(model, layers)
    pruner = GlobalGatePruner(model, layers, points, SHAPE, minimal_ratio=0.25)
    gated = resnet20()
    gates = attach_gates(gated, list(points))
    with torch.no_grad():  # layer3's channels are the least important
        for name, gate in gates.items():
            gate.score.copy_(torch.rand(len(gate.score)) + (0.0 if name.startswith("layer3") else 10.0))
    closed = pruner.prune(gates, 20, target=0.1)          # stops at nb first
    names = list(gates)
    assert closed == 20
    assert sum(gates[n].mask.numel() - gates[n].nb_kept for n in names if n.startswith("layer3")) == 20
    pruner.prune(gates, 10_000, target=0.6)               # then at the target
    ratio = pruner.ratio(gates)
    counts = pruner.counts(gates)
    flops = ChannelFlops(model, layers, SHAPE)
    largest_step = max(flops.flops(counts) - flops.flops({**counts, layer: n - 1})
                       for layer, n in counts.items()) / flops.total
    assert 0.6 - largest_step < ratio <= 0.6
    for name, gate in gates.items():
        assert gate.nb_kept >= int(gate.mask.numel() * 0.25)
    counts = pruner.counts(gates)
    assert ratio == pytest.approx(count_flops(thin(model, layers, {
        layer: torch.arange(n) for layer, n in counts.items()})[0], SHAPE) / count_flops(model, SHAPE))


def test_triangular_lr_rises_then_falls():
    lr = TriangularLr(1e-3, 1e-2, 100)
    assert lr(0) == pytest.approx(1e-3)
    assert lr(50) == pytest.approx(1e-2)
    assert lr(25) == pytest.approx(5.5e-3)
    assert lr(75) == pytest.approx(5.5e-3)
    assert lr(100) == pytest.approx(1e-3)


def gd(tmp_path, **options):
    """gate-decorator through the Python API; the full model is trained first into
    ``tmp_path/full`` (outputs under ``tmp_path/gate-decorator``)."""
    import pocketflow_torch as pf

    return pf.compress(digits_helper(), learner="gate-decorator", out_dir=str(tmp_path),
                       **{"report_latency": False, "tick_nb_batches": 2, "t": 3, "p": 0.05,
                          "tock_epoch": 0.1, **options})


@pytest.fixture(scope="module")
def gd_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gd")
    result = gd(tmp_path)
    return tmp_path, result, result.report


def test_learner_reaches_the_flops_target_with_a_thinned_artifact(gd_run):
    tmp_path, result, report = gd_run
    saved = json.load(open(tmp_path / "gate-decorator" / "report.json"))
    ratio = saved["flops"]["compressed"] / saved["flops"]["full"]
    assert 0.45 <= ratio <= 0.5
    assert saved["gate_decorator"]["flops_ratio"] == pytest.approx(ratio)
    assert saved["gate_decorator"]["gated_layers"] == 9
    assert len(saved["gate_decorator"]["rounds"]) >= 2       # several tick-tock rounds
    assert saved["params"]["compressed"] < 0.6 * saved["params"]["full"]
    for key in ("full", "gated", "compressed_before_finetune", "compressed"):
        assert 0.0 <= saved["accuracy"][key] <= 1.0
    # melting is exact: the thinned model scores what the gated one does
    assert saved["accuracy"]["compressed_before_finetune"] == pytest.approx(saved["accuracy"]["gated"])
    # only block-inner channels shrink: the residual width (e.g. layer1.0.conv1's input) stays
    assert all(name.endswith("conv2") for name in saved["kept_channels"])
    model, _ = load_model(result.artifact)
    assert sum(p.numel() for p in model.parameters()) == saved["params"]["compressed"]
    assert model.layer1[0].conv1.in_channels == 16
    assert saved["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, saved["onnx"]["max_abs_output"])
    assert [e["learner"] for e in saved["chain"]] == ["full-prec", "gate-decorator"]


def test_resume_continues_the_finetuning_of_the_thinned_model(gd_run):
    tmp_path, _, report = gd_run
    resumed = gd(tmp_path, resume=True).report
    assert "tock0" not in resumed["wall_s"]                 # no new tick-tock
    assert resumed["params"]["compressed"] == report["params"]["compressed"]
    assert resumed["accuracy"]["compressed"] == pytest.approx(report["accuracy"]["compressed"])


def test_unreachable_target_names_the_reachable_ratio(gd_run):
    tmp_path, _, _ = gd_run
    with pytest.raises(ConfigError, match=r"^--preserve_ratio=0\.05 cannot be reached.*keeps "
                                          r"0\.\d+ of its FLOPs"):
        gd(tmp_path / "x", full_model=str(tmp_path / "full" / "model.ckpt"), preserve_ratio=0.05)
    assert not (tmp_path / "x" / "gate-decorator" / "model.ckpt").exists()


@pytest.mark.parametrize("option, value", [("preserve_ratio", 0.0), ("preserve_ratio", 1.5),
                                           ("p", 0.0), ("t", 0), ("lr_min", 1.0)])
def test_bad_options_are_refused(tmp_path, option, value):
    with pytest.raises(ConfigError, match=f"^--{option}: "):
        gd(tmp_path, **{option: value})
    flags_of = flag_values(tmp_path, "--learner=gate-decorator", f"--gd_{option}={value}")
    with pytest.raises(ConfigError, match=f"^--gd_{option}: "):          # on the command line
        run(resnet_at_digits.ModelHelper, flags_of)


def test_resume_after_the_tick_tock_rounds_skips_them(gd_run):
    """The gated model is saved after every round: a run interrupted after the last one
    resumes with the same gates (no new round) and melts them into the same thinned model."""
    tmp_path, _, report = gd_run
    os.remove(tmp_path / "gate-decorator" / "ckpt" / "model.ckpt")   # only ticktock.pt is left
    resumed = gd(tmp_path, resume=True).report
    assert resumed["gate_decorator"]["rounds"] == []
    assert resumed["kept_channels"] == report["kept_channels"]
    assert resumed["accuracy"]["gated"] == pytest.approx(report["accuracy"]["gated"])
