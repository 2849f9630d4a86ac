"""Per-layer ratio protocols of chn-pruned-rmt and dis-chn-pruned (uniform / list / optimal under
a FLOPs or a latency budget), the latency lookup table and the settling of a latency budget on
measurements, and the bad inputs of those options."""
from __future__ import annotations

import json
import os

import pytest
import torch
from absl.flags import IllegalFlagValueError

from compression.budget.allocation import BudgetError, allocate_channels
from compression.budget.flops import ChannelFlops
from compression.budget.latency import ChannelLatency, _grid, settle_budget, thin_to_counts
from compression.graph.layers import choose_layers
from compression.budget.counts import counts_for_ratios
from compression.graph.layers import analyse
from learners.launch import run
from nets import resnet_at_digits
from nets.registry import create_net
from tests.conftest import compress_digits, flag_values, flops_timing, half_fixed_ratio
from utils.config import ConfigError
from compression.artifacts import load_model
from utils.model_stats import count_flops

SEARCH = ["--{p}_nb_rlouts=3", "--{p}_nb_rlouts_min=2", "--{p}_rl_nb_batches=1", "--{p}_rerank_ft_steps=2",
          "--{p}_nb_iters_feval=1", "--ddpg_batch_size=8"]
OWN = {"cpr": ["--learner=chn-pruned-rmt", "--cpr_nb_smpls=64"],
       "dcp": ["--learner=dis-chn-pruned", "--dcp_nb_iters_block=2", "--dcp_nb_iters_layer=1",
               "--dcp_nb_batches=2"]}


def values_for(prefix: str, tmp_path, tiny_pretrained, *extra: str) -> dict:
    tiny_pretrained(tmp_path)
    return flag_values(tmp_path, *OWN[prefix], "--nb_epochs_rat=0.05", "--image_size=8",
                       f"--{prefix}_save_path={tmp_path}/c/model.ckpt",
                       f"--{prefix}_save_path_eval={tmp_path}/c_eval/model.ckpt",
                       f"--{prefix}_save_path_ws={tmp_path}/c_ws/model.ckpt",
                       *[flag.format(p=prefix) for flag in extra])


LEARNERS = {"cpr": "chn-pruned-rmt", "dcp": "dis-chn-pruned"}
OWN_OPTIONS = {"cpr": {"nb_smpls": 64},
               "dcp": {"nb_iters_block": 2, "nb_iters_layer": 1, "nb_batches": 2}}
SEARCH_OPTIONS = dict(nb_rlouts=3, nb_rlouts_min=2, rl_nb_batches=1, rerank_ft_steps=2,
                      nb_iters_feval=1, ddpg_batch_size=8)


def compress(prefix: str, tmp_path, tiny_pretrained, **options):
    """chn-pruned-rmt or dis-chn-pruned through the Python API."""
    return compress_digits(tmp_path, tiny_pretrained, LEARNERS[prefix],
                           **{**OWN_OPTIONS[prefix], **options})


def _saved(result) -> tuple[dict, torch.nn.Module]:
    with open(os.path.join(os.path.dirname(result.artifact), "report.json")) as handle:
        report = json.load(handle)
    assert report == result.report
    model, _ = load_model(result.artifact)
    return report, model


def _resnet20():
    model = create_net("resnet20", num_classes=10, in_channels=1).eval()
    shape = (1, 8, 8)
    layers = analyse(model, shape)
    return model, layers, choose_layers(layers, True, False, []), shape


# -- the learners end to end -------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["cpr", "dcp"])
def test_optimal_search_meets_the_flops_budget_and_thins(prefix, tmp_path, tiny_pretrained):
    result = compress(prefix, tmp_path, tiny_pretrained, prune_ratio_prtl="optimal",
                      preserve_ratio=0.5, **SEARCH_OPTIONS)
    report = result.report
    saved, model = _saved(result)
    assert len(report["search"]["history"]) == 3
    assert report["search"]["reward"] == max(report["search"]["history"])
    strategy = saved["strategy"]
    assert strategy["protocol"] == "auto" and strategy["budget_target"] == 0.5
    assert 0.49 <= strategy["flops_ratio"] <= 0.5                       # within 2 % of the budget
    # the plan drops shared channels no reader kept (below the estimate, which counts them as
    # kept); dead-channel elimination then what residual sums' late members compute for nobody
    full, dead = report["flops"]["full"], report["dead_channels"]
    assert strategy["flops_ratio"] - 0.05 <= dead["flops_before"] / full
    assert dead["flops_before"] / full <= strategy["flops_ratio"] + 1e-9
    assert count_flops(model, (1, 8, 8)) == dead["flops_after"] <= dead["flops_before"]
    for name, (count, _) in strategy["kept"].items():
        assert model.get_submodule(name).weight.shape[1] == count, name
    assert saved["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, saved["onnx"]["max_abs_output"])


def test_uniform_without_a_budget_keeps_pocketflows_counts(tmp_path, tiny_pretrained):
    saved, _ = _saved(compress("cpr", tmp_path, tiny_pretrained, prune_ratio=0.25))
    _, _, chosen, _ = _resnet20()
    expected = counts_for_ratios(chosen, {layer.name: 0.25 for layer in chosen})
    assert {name: kept for name, (kept, _) in saved["strategy"]["kept"].items()} == expected
    assert saved["strategy"]["budget_target"] is None


def test_uniform_under_a_flops_budget_and_rerank_keeps_the_best(tmp_path, tiny_pretrained):
    saved, _ = _saved(compress("cpr", tmp_path, tiny_pretrained, prune_ratio_prtl="optimal",
                               preserve_ratio=0.6, nb_rerank=2, **SEARCH_OPTIONS))
    rerank = saved["strategy"]["rerank"]
    assert 2 <= len(rerank["candidates"]) <= 3                       # uniform + the search's best
    assert sum(c["uniform"] for c in rerank["candidates"]) == 1
    best = max(rerank["candidates"], key=lambda c: (c["accuracy"], -c["loss"]))
    assert rerank["candidates"][rerank["chosen"]] == best
    assert 0.588 <= saved["strategy"]["flops_ratio"] <= 0.6


def test_list_protocol_reads_kept_fractions(tmp_path, tiny_pretrained):
    _, _, chosen, _ = _resnet20()
    path = tmp_path / "kept.list"
    path.write_text("".join(f"{layer.name} 0.5\n" for layer in chosen))
    saved, _ = _saved(compress("cpr", tmp_path, tiny_pretrained, prune_ratio_prtl="list",
                               prune_list_file=str(path), channel_multiple=4))
    for layer in chosen:
        kept, width = saved["strategy"]["kept"][layer.name]
        assert kept == max(4, width // 2) and kept % 4 == 0


def test_latency_budget_is_settled_on_measurements(tmp_path, tiny_pretrained, monkeypatch):
    """The budget is met on what is MEASURED, whatever the table predicted. The measurement is
    replaced by a deterministic stand-in (half the latency fixed, half proportional to the
    FLOPs): real timings are too noisy for a unit test; benchmarks/rl_ratios.py shows them.
    The lookup table's timings are deterministic too (``flops_timing``): with real ones the
    table's targets, and so the trials, varied from run to run. Counts are multiples of 8, the
    default under a latency budget."""
    import compression.budget.strategy as strategy_module

    flops_timing(monkeypatch)

    monkeypatch.setattr(strategy_module, "measured_ratio", half_fixed_ratio)
    result = compress("cpr", tmp_path, tiny_pretrained, budget_type="latency", preserve_ratio=0.8,
                      min_preserve_ratio=0.25)
    report = result.report
    saved, model = _saved(result)
    latency = saved["strategy"]["latency"]
    assert 1 <= len(latency["trials"]) <= 4 and latency["batch"] == 1
    assert latency["within_tolerance"] and abs(latency["measured_ratio"] - 0.8) <= 0.04
    flops_ratio = report["flops"]["compressed"] / report["flops"]["full"]
    # measured on the strategy's architecture; the final model may also drop channels that
    # no reader kept, so it is at most that slow
    assert 0.5 + 0.5 * flops_ratio <= latency["measured_ratio"] + 1e-9
    assert latency["measured_ratio"] - 0.5 * 0.1 <= 0.5 + 0.5 * flops_ratio
    for name, (count, width) in saved["strategy"]["kept"].items():
        assert count % 8 == 0 or width < 8, (name, count)
        assert model.get_submodule(name).weight.shape[1] == count


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["cpr", "dcp"])
@pytest.mark.parametrize("flags,match", [
    (["--{p}_preserve_ratio=1.5"], "must be in \\(0, 1\\] or 0, got 1.5"),
    (["--{p}_preserve_ratio=-0.2"], "must be in \\(0, 1\\] or 0, got -0.2"),
    (["--{p}_budget_type=latency"], "a latency budget needs --{p}_preserve_ratio in \\(0, 1\\]"),
    (["--{p}_prune_ratio_prtl=optimal", "--{p}_nb_rlouts=2", "--{p}_nb_rlouts_min=3"],
     "{p}_nb_rlouts_min"),
])
def test_bad_strategy_options_are_refused(prefix, flags, match, tmp_path, tiny_pretrained):
    with pytest.raises(ConfigError, match=match.format(p=prefix)):
        run(resnet_at_digits.ModelHelper, values_for(prefix, tmp_path, tiny_pretrained, *flags))


@pytest.mark.parametrize("prefix", ["cpr", "dcp"])
def test_budget_the_skip_rules_make_impossible_is_refused(prefix, tmp_path, tiny_pretrained):
    """Only the last stage may shrink (skip rules): 20 % of the FLOPs is out of reach."""
    values = values_for(prefix, tmp_path, tiny_pretrained, "--{p}_prune_ratio_prtl=optimal",
                        "--{p}_preserve_ratio=0.2", "--{p}_skip_op_names=layer1,layer2", *SEARCH)
    with pytest.raises(BudgetError, match="a FLOPs budget of 0.200 cannot be met.*skip rules"):
        run(resnet_at_digits.ModelHelper, values)


def test_unknown_protocol_lists_the_valid_ones(tmp_path, tiny_pretrained):
    with pytest.raises(IllegalFlagValueError, match="one of <optimal|uniform|list|netadapt>"):
        values_for("cpr", tmp_path, tiny_pretrained, "--cpr_prune_ratio_prtl=auto")


def test_a_latency_budget_with_prune_residual_times_the_residual_architecture(
        tmp_path, tiny_pretrained, monkeypatch):
    """Under a latency budget with ``prune_residual`` the strategies are measured as the learner
    thins them: every residual stream at its group's count (not kept whole with its readers
    gathering), so the measured ratio is that of the final model. The deterministic stand-in
    of the previous test prices the FLOPs of what is measured; the table's timings are
    deterministic too (``flops_timing``)."""
    import compression.budget.strategy as strategy_module

    flops_timing(monkeypatch)

    monkeypatch.setattr(strategy_module, "measured_ratio", half_fixed_ratio)
    result = compress("cpr", tmp_path, tiny_pretrained, prune_residual=True,
                      budget_type="latency", preserve_ratio=0.75, min_preserve_ratio=0.25,
                      channel_multiple=1, export_format="none")
    report = result.report
    saved, model = _saved(result)
    latency = saved["strategy"]["latency"]
    assert latency["within_tolerance"] and abs(latency["measured_ratio"] - 0.75) <= 0.0375
    flops_ratio = report["flops"]["compressed"] / report["flops"]["full"]
    chosen = min(latency["trials"], key=lambda t: abs(t["measured"] - 0.75))["measured"]
    assert chosen == pytest.approx(0.5 + 0.5 * flops_ratio, abs=1e-9)   # the final model's
    kept = saved["strategy"]["kept"]
    for group in report["residual_groups"]:
        assert group["kept"] < group["channels"]
    stage2 = next(g["kept"] for g in report["residual_groups"] if g["channels"] == 32)
    assert {kept[name][0] for name in ("layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1",
                                       "layer3.0.shortcut.0")} == {stage2}
    assert all(block.conv2.out_channels == stage2 for block in model.layer2)


def test_netadapt_meets_a_measured_latency_budget_by_residual_groups(
        tmp_path, tiny_pretrained, monkeypatch):
    """``prune_ratio_prtl=netadapt``: each step shrinks one unit (a residual group or a layer
    outside the groups), the best-scoring of one proposal per unit; the budget is held on the
    (deterministic stand-in) measurement of the final architecture."""
    import compression.budget.strategy as strategy_module

    flops_timing(monkeypatch)
    monkeypatch.setattr(strategy_module, "measured_ratio", half_fixed_ratio)
    result = compress("cpr", tmp_path, tiny_pretrained, prune_ratio_prtl="netadapt",
                      budget_type="latency", preserve_ratio=0.8, netadapt_steps=2,
                      rl_nb_batches=1, nb_iters_feval=1, channel_multiple=-1,
                      export_format="none")
    saved, model = _saved(result)
    search, latency = saved["search"], saved["strategy"]["latency"]
    assert search["method"] == "netadapt" and search["iterations"]
    units = 3 + 9                                   # three stream groups, nine inner convs
    assert all(1 <= it["proposals"] <= units for it in search["iterations"])
    assert latency["measured_ratio"] <= 0.8 * 1.05 and latency["within_tolerance"]
    assert latency["measured_ratio"] == search["measured"][-1]["measured"]
    flops_ratio = result.report["flops"]["compressed"] / result.report["flops"]["full"]
    assert 0.5 + 0.5 * flops_ratio <= latency["measured_ratio"] + 1e-9
    kept = saved["strategy"]["kept"]
    stage2 = {kept[name][0] for name in ("layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1")}
    assert len(stage2) == 1
    for name, (count, _) in kept.items():
        assert model.get_submodule(name).weight.shape[1] == count, name


def test_thin_to_counts_thins_residual_streams_as_groups():
    model, layers, chosen, shape = _resnet20()
    from compression.selection.residual_groups import residual_groups
    from compression.budget.strategy import at_group_counts

    groups = residual_groups(layers, chosen)
    flops = ChannelFlops(model, layers, shape, groups)
    counts = at_group_counts({layer.name: max(1, layer.in_channels * 3 // 8) for layer in chosen},
                             flops)
    widths = [m.out_channels for m in thin_to_counts(model, layers, counts, groups).modules()
              if isinstance(m, torch.nn.Conv2d)]
    assert widths == [6] * 7 + [12] * 7 + [24] * 7
    apart = [m.out_channels for m in thin_to_counts(model, layers, counts).modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert apart[:3] == [16, 6, 16]            # per layer: the stream stays, readers gather
    # readers of one stream stepped up apart: the group's count, rounded to the multiple
    stage1 = next(g for g in groups if len(g.roots) == 16)
    stepped = {**counts, **dict.fromkeys(stage1.readers, 8), stage1.readers[0]: 16}
    assert {at_group_counts(stepped, flops)[n] for n in stage1.readers} == {10}
    assert {at_group_counts(stepped, flops, 8)[n] for n in stage1.readers} == {8}
    assert {at_group_counts(stepped, flops, -16)[n] for n in stage1.readers} == {10}


def test_thin_to_counts_keeps_a_share_of_every_part_of_a_concatenation():
    """A reader of a concatenation keeps its count spread over the parts, so a producer that
    only it reads keeps about that share (with the first channels instead, the last dense
    layer kept 1 of its 6 outputs, and a latency budget timed a smaller model than the one
    delivered)."""
    from tests.zoo.nets import INPUT_SHAPE, DenseNet

    model = DenseNet().eval()
    layers = analyse(model, INPUT_SHAPE)
    chosen = choose_layers(layers, True, False, [])
    counts = {layer.name: layer.in_channels for layer in chosen}
    counts["transition.2"] = 13                         # half of its 26 inputs
    thinned = thin_to_counts(model, layers, counts)
    assert thinned.dense[2][2].out_channels == 3        # half of the last dense layer's 6
    assert thinned.transition[2].weight.shape[1] == 13


# -- the latency lookup table and the settling ---------------------------------------------------
def test_grid_steps_by_the_channel_multiple():
    assert _grid(16, True, 8) == [1, 8, 16]
    assert _grid(64, True, 8) == [1, 8, 16, 24, 32, 40, 48, 56, 64]
    assert _grid(64, True, 1) == [1, 8, 16, 24, 32, 40, 48, 56, 64]   # at most 9 points
    assert _grid(30, True, 1) == [1, 4, 8, 12, 16, 20, 24, 28, 30]
    assert _grid(64, False, 8) == [64]


def test_latency_table_is_exact_at_the_unpruned_model_and_allocation_meets_it(monkeypatch):
    flops_timing(monkeypatch)
    model, layers, chosen, shape = _resnet20()
    flops = ChannelFlops(model, layers, shape)
    table = ChannelLatency(model, flops, chosen, shape, batch=4, multiple=8, repeats=3)
    assert table.ratio({}) == pytest.approx(1.0)
    # every module whose channels a pruned layer changes has a table; the stem conv's output
    # is the residual stream (gathered, never shrunk): no table
    assert set(table.tables) == {layer.name for layer in chosen}
    counts = allocate_channels({layer.name: 1.0 for layer in chosen}, chosen, table, 0.97,
                               multiple=8)
    assert table.ratio(counts) <= 0.97
    assert all(c % 8 == 0 for c in counts.values())
    # calibration: the savings are rescaled so that a measured strategy is predicted exactly
    smallest = {layer.name: 8 for layer in chosen}
    table.calibrate(smallest, 0.8)
    assert table.ratio(smallest) == pytest.approx(0.8)
    assert table.ratio({}) == pytest.approx(1.0)
    table.calibrate(smallest, 1.1)                          # measured slower: nothing to save
    assert table.savings_scale == 0.0 and table.ratio(counts) == pytest.approx(1.0)
    # a table that sees no saving where the measurement does: savings follow the FLOPs
    table.savings_scale, table.rest = 1.0, table.rest + table.total
    table.calibrate(smallest, 0.7)
    assert table.shape == "flops" and table.ratio(smallest) == pytest.approx(0.7)
    assert table.ratio(counts) == pytest.approx(1 - 0.3 * (1 - flops.ratio(counts)) /
                                                (1 - flops.ratio(smallest)))


def test_settle_rescales_the_table_target_until_measurements_agree():
    """A table that is 30 % optimistic: the target is lowered until the 'measured' ratio is
    within 5 % of the budget."""
    model, layers, chosen, shape = _resnet20()
    flops = ChannelFlops(model, layers, shape)

    def allocate(target: float) -> dict:
        return allocate_channels({layer.name: 1.0 for layer in chosen}, chosen, flops, target)

    def measure(counts: dict) -> float:
        return min(1.0, 1.3 * flops.ratio(counts))

    counts, trials = settle_budget(allocate, measure, 0.5)
    assert abs(measure(counts) - 0.5) <= 0.025
    assert trials[0]["target"] == 0.5 and trials[0]["measured"] == pytest.approx(0.65, abs=0.02)
    assert len(trials) >= 2 and trials[-1]["target"] < 0.4


def test_settle_refuses_a_budget_the_measurements_cannot_reach():
    model, layers, chosen, shape = _resnet20()
    flops = ChannelFlops(model, layers, shape)

    def allocate(target: float) -> dict:
        return allocate_channels({layer.name: 1.0 for layer in chosen}, chosen, flops, target,
                                 min_ratio=0.3)

    with pytest.raises(BudgetError, match=r"a latency budget of 0.300 cannot be met: the "
                       r"strategies measured so far run at \[0.72"):
        settle_budget(allocate, lambda counts: 0.6 + 0.4 * flops.ratio(counts), 0.3)


def test_thin_to_counts_has_the_strategy_architecture():
    model, layers, chosen, shape = _resnet20()
    counts = {layer.name: max(1, layer.in_channels // 2) for layer in chosen}
    thinned = thin_to_counts(model, layers, counts)
    for name, count in counts.items():
        assert thinned.get_submodule(name).weight.shape[1] == count
    assert thinned(torch.zeros(2, *shape)).shape == (2, 10)
    assert count_flops(thinned, shape) == ChannelFlops(model, layers, shape).flops(counts)
