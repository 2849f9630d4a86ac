"""channel learner and its pieces: exact FLOPs of a strategy, budget-meeting allocation, ratio
lists, the AMC environment, and end-to-end runs (uniform, list, auto) ending in thinned models."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from compression.budget.allocation import BudgetError, allocate_channels, amc_min_ratio, count_at
from compression.budget.flops import ChannelFlops
from compression.graph.layers import choose_layers
from compression.graph.layers import analyse
from utils.config import ConfigError
from compression.budget.ratio_list import RatioListError, read_ratio_list, write_ratio_list
from compression.artifacts import build_model
from compression.surgery.dead_channels import unread_outputs
from compression.surgery.thinning import mask_inputs, thin
from compression.surgery.unread import unread_channels
from utils.model_io import module_spec
from learners.channel.search_env import ChannelEnv
from nets.registry import create_net
from tests.conftest import INPUT_SIZES, compress_digits, digits_helper
from tests.zoo.nets import UserNet
from compression.artifacts import load_model
from utils.model_stats import count_flops


def _net_kwargs(name: str) -> dict:
    size = INPUT_SIZES[name]
    return {"num_classes": 10, "in_channels": 3, **({"input_size": size} if name == "lenet" else {})}


def _net(name: str):
    size = INPUT_SIZES[name]
    model = create_net(name, **_net_kwargs(name)).eval()
    layers = analyse(model, (3, size, size))
    return model, layers, (3, size, size)


@pytest.mark.parametrize("name", list(INPUT_SIZES))
def test_strategy_flops_equal_the_thinned_models_flop_counter(name):
    model, layers, shape = _net(name)
    flops = ChannelFlops(model, layers, shape)
    assert flops.total == count_flops(model, shape)
    gen = torch.Generator().manual_seed(0)
    chosen = choose_layers(layers, True, False, [])
    keep = {layer.name: torch.randperm(layer.in_channels, generator=gen)[
        :int(torch.randint(1, layer.in_channels + 1, (1,), generator=gen))] for layer in chosen}
    plain, _ = thin(model, layers, keep, eliminate=False)
    actual = count_flops(plain, shape)
    assert flops.flops_of(keep) == actual
    # from counts alone: exact for what one layer reads alone; shared channels count as kept
    assert actual <= flops.flops({n: len(k) for n, k in keep.items()})


@pytest.mark.parametrize("name", list(INPUT_SIZES))
def test_dead_channel_elimination_is_exact_and_leaves_no_unread_channel(name):
    model, layers, shape = _net(name)
    gen = torch.Generator().manual_seed(1)
    keep = {layer.name: torch.randperm(layer.in_channels, generator=gen)[:layer.in_channels // 2]
            for layer in choose_layers(layers, True, False, [])}
    plain, _ = thin(model, layers, keep, eliminate=False)
    stats = {}
    thinned, spec = thin(model, layers, keep, module_spec(model), stats=stats)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        for mode in ("eval", "train"):                   # the same dropout draws in train mode
            expected = torch.manual_seed(0) and getattr(plain, mode)()(x)
            got = torch.manual_seed(0) and getattr(thinned, mode)()(x)
            assert (expected - got).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())
    # what is left unread is where a scatter would cost more than the channels (_pays)
    left = stats["not_worth"]
    assert unread_outputs(thinned, shape) == left and stats["unread_channels"] == sum(left.values())
    before = unread_outputs(plain, shape)
    assert {w: stats["removed"].get(w, 0) + left.get(w, 0) for w in before} == before
    assert stats["flops_before"] == count_flops(plain, shape)
    assert stats["flops_after"] == count_flops(thinned, shape)
    assert (stats["flops_after"] < stats["flops_before"]) == bool(stats["removed"])
    if name.startswith("resnet") or name == "mobilenet_v2":       # late residual members
        assert before
    rebuilt = build_model(spec, base=create_net(name, **_net_kwargs(name)))
    rebuilt.load_state_dict(thinned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), thinned.eval()(x))
    if name in ("lenet", "resnet20"):                   # the perturbation probe agrees
        assert unread_channels(plain, shape) == before and unread_channels(thinned, shape) == left


def test_flops_of_a_users_net_with_concat_and_depthwise():
    model = UserNet().eval()
    layers = analyse(model, (3, 12, 12))
    keep = {"left.0": torch.tensor([0, 2, 5]), "pw": torch.tensor([1, 3, 4, 8, 15, 20]),
            "head": torch.tensor([0, 7, 9])}
    plain, _ = thin(model, layers, keep, eliminate=False)
    flops = ChannelFlops(model, layers, (3, 12, 12))
    estimate = flops.flops({"left.0": 3, "pw": 6, "head": 3})
    assert estimate == count_flops(plain, (3, 12, 12))
    # the residual member pw computes only the 3 channels head reads (not all 6 that `expand`,
    # before the sum, keeps of the concatenation too)
    thinned, _ = thin(model, layers, keep)
    assert thinned.pw.out_channels == 3 and count_flops(thinned, (3, 12, 12)) < estimate


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
@pytest.mark.parametrize("preserve", [0.3, 0.5, 0.7])
def test_allocation_meets_the_flops_budget_within_two_percent(name, preserve):
    model, layers, shape = _net(name)
    chosen = choose_layers(layers, True, True, [])
    flops = ChannelFlops(model, layers, shape)
    rng = np.random.default_rng(0)
    for trial in range(10):
        prefs = {layer.name: float(rng.random()) for layer in chosen}
        for multiple in (1, 4):
            counts = allocate_channels(prefs, chosen, flops, preserve, amc_min_ratio(preserve),
                                       multiple)
            ratio = flops.ratio(counts)
            assert preserve * 0.98 <= ratio <= preserve, (trial, multiple, ratio)
            if multiple == 4:
                assert all(c % 4 == 0 for c in counts.values())
            lbound = amc_min_ratio(preserve)
            assert all(counts[layer.name] >= count_at(lbound, layer.in_channels, multiple)
                       for layer in chosen)


def test_equal_preferences_keep_the_same_fraction_everywhere():
    model, layers, shape = _net("resnet20")
    chosen = choose_layers(layers, True, True, [])
    flops = ChannelFlops(model, layers, shape)
    counts = allocate_channels({layer.name: 1.0 for layer in chosen}, chosen, flops, 0.5)
    fractions = {round(counts[layer.name] / layer.in_channels, 1) for layer in chosen}
    assert len(fractions) == 1, counts      # one fraction, up to one channel of rounding
    assert 0.49 <= flops.ratio(counts) <= 0.5


def test_an_impossible_budget_names_the_least_achievable():
    model, layers, shape = _net("resnet20")
    chosen = choose_layers(layers, True, True, ["layer1", "layer2"])   # only stage 3 may shrink
    flops = ChannelFlops(model, layers, shape)
    with pytest.raises(BudgetError, match="cannot be met.*keeps 0.7"):
        allocate_channels({layer.name: 1.0 for layer in chosen}, chosen, flops, 0.5, 0.25)
    with pytest.raises(BudgetError, match=r"\(0, 1\]"):
        allocate_channels({layer.name: 1.0 for layer in chosen}, chosen, flops, 1.5)


# -- ratio lists ---------------------------------------------------------------------------
NAMES = ["a.conv", "b.conv", "c.fc"]


def test_ratio_list_round_trip_and_plain_form(tmp_path):
    path = str(tmp_path / "ratios.list")
    write_ratio_list(path, {"c.fc": 1.0, "a.conv": 0.25, "b.conv": 0.5}, "fraction kept")
    assert read_ratio_list(path, NAMES) == {"a.conv": 0.25, "b.conv": 0.5, "c.fc": 1.0}
    (tmp_path / "plain.list").write_text("# kept\n0.5\n\n0.75  # comment\n1\n")
    assert read_ratio_list(str(tmp_path / "plain.list"), NAMES) == {
        "a.conv": 0.5, "b.conv": 0.75, "c.fc": 1.0}
    (tmp_path / "pocketflow.list").write_text("0.5,0.75, 1\n")    # PocketFlow's documented form
    assert read_ratio_list(str(tmp_path / "pocketflow.list"), NAMES) == {
        "a.conv": 0.5, "b.conv": 0.75, "c.fc": 1.0}
    assert issubclass(RatioListError, ConfigError)          # a user error: one line, exit 2


@pytest.mark.parametrize("text,message", [
    ("0.5\n0.5\n", "2 ratios .last on line 2. for 3 layers"),
    ("0.5\n1.5\n0.5\n", ":2: ratio 1.5 is outside"),
    ("0.5\n-0.1\n0.5\n", ":2: ratio -0.1 is outside"),
    ("0.5\n0.5\nhalf\n", ":3: 'half' is not a number"),
    ("0.5\nnan\n0.5\n", ":2: ratio nan is outside"),
    ("a.conv 0.5\nb.conv 0.5\nd.conv 0.5\n", ":3: unknown layer 'd.conv'"),
    ("a.conv 0.5\na.conv 0.5\nc.fc 1\n", ":2: layer 'a.conv' is listed twice"),
    ("a.conv 0.5\nb.conv 0.5\n", "no ratio for layers c.fc"),
    ("a.conv 0.5\n0.5\n0.5\n", "mixes"),
    ("a.conv 0.5 extra\n", ":1: expected"),
    ("0.5,x,0.5\n", ":1: 'x' is not a number"),
    ("0.5,0.5\n", "2 ratios .last on line 1. for 3 layers"),
])
def test_malformed_ratio_lists_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad.list"
    path.write_text(text)
    with pytest.raises(RatioListError, match=message):
        read_ratio_list(str(path), NAMES)


def test_a_missing_ratio_list_names_the_layers(tmp_path):
    with pytest.raises(RatioListError, match="does not exist.*a.conv, b.conv, c.fc"):
        read_ratio_list(str(tmp_path / "nope.list"), NAMES)


# -- the AMC environment -------------------------------------------------------------------
def test_channel_env_state_budget_and_rewards():
    model, layers, shape = _net("resnet20")
    chosen = choose_layers(layers, True, True, [])
    flops = ChannelFlops(model, layers, shape)
    seen = []

    def score(counts):
        seen.append(counts)
        return {"accuracy": 0.9, "loss": 0.3}

    env = ChannelEnv(model, chosen, flops, 0.5, score, amc_min_ratio(0.5))
    assert env.nb_steps == len(chosen) and env.state_dim == 12
    env.reset()
    for step, action in enumerate(env.baseline_actions()):
        state = env.observation(step)
        assert state.shape == (12,) and np.all((state >= 0) & (state <= 1))
        env.take(step, action)
    reward, info = env.finish()
    assert reward == pytest.approx(0.9 - 0.01 * 0.3)
    assert 0.49 <= info["flops_ratio"] <= 0.5 and len(info["counts"]) == len(chosen)
    flops_env = ChannelEnv(model, chosen, flops, 0.5, score, reward_policy="flops",
                           noise_tolerance=0.15)
    flops_env.prefs = [1.0] * len(chosen)
    reward, info = flops_env.finish()
    assert reward == pytest.approx(-0.15 * np.log(info["flops_ratio"] * flops.total))
    with pytest.raises(BudgetError):
        ChannelEnv(model, chosen, flops, 0.01, score, min_ratio=0.5)


# -- the learner end to end ----------------------------------------------------------------
def channel(tmp_path, tiny_pretrained, **options):
    """``channel`` through the Python API (outputs under ``tmp_path/channel``)."""
    return compress_digits(tmp_path, tiny_pretrained, "channel", nb_batches=2, **options)


def _check_thinned(result) -> dict:
    saved = json.load(open(os.path.join(os.path.dirname(result.artifact), "report.json")))
    assert saved == result.report
    model, _ = load_model(result.artifact)
    kept = saved["strategy"]["kept"]
    for name, (count, _) in kept.items():
        assert model.get_submodule(name).weight.shape[1] == count, name
    assert saved["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, saved["onnx"]["max_abs_output"])
    assert saved["flops"]["compressed"] == count_flops(model, (1, 8, 8))
    return saved


def test_uniform_meets_the_flops_budget_and_thins(tmp_path, tiny_pretrained):
    saved = _check_thinned(channel(tmp_path, tiny_pretrained, prune_option="uniform",
                                   preserve_ratio=0.5))
    ratio = saved["flops"]["compressed"] / saved["flops"]["full"]
    # the allocation counts channels that several layers read as kept (0.49..0.5); thinning
    # then also drops those that none of them kept, so the model is at or below the budget
    assert 0.49 <= saved["strategy"]["flops_ratio"] <= 0.5
    assert saved["strategy"]["flops_ratio"] - 0.05 <= ratio <= saved["strategy"]["flops_ratio"]
    assert "conv1" not in saved["strategy"]["kept"] and "fc" not in saved["strategy"]["kept"]


def test_list_protocol_keeps_the_listed_fractions_with_quadruple(tmp_path, tiny_pretrained):
    chosen = choose_layers(analyse(create_net("resnet20", num_classes=10, in_channels=1),
                                   (1, 8, 8)), True, True, [])
    fractions = [0.25 if i % 2 else 0.75 for i in range(len(chosen))]
    (tmp_path / "ratios.list").write_text("\n".join(map(str, fractions)) + "\n")
    saved = _check_thinned(channel(tmp_path, tiny_pretrained, prune_option="list",
                                   prune_list_file=f"{tmp_path}/ratios.list", quadruple=True,
                                   lasso=False, list_group=7, finetune=True))
    for layer, fraction in zip(chosen, fractions):
        count, width = saved["strategy"]["kept"][layer.name]
        assert count == count_at(fraction, width, 4) and count % 4 == 0


def test_auto_searches_under_the_budget(tmp_path, tiny_pretrained):
    result = channel(tmp_path, tiny_pretrained, prune_option="auto", preserve_ratio=0.6,
                     nb_rlouts=3, nb_rlouts_min=2, rl_nb_batches=1, rerank_ft_steps=2,
                     nb_iters_feval=1, rl_ft_steps=1, ddpg_batch_size=8)
    saved, report = _check_thinned(result), result.report
    assert len(report["search"]["history"]) == 3
    assert 0.588 <= saved["strategy"]["flops_ratio"] <= 0.6
    assert report["search"]["reward"] == max(report["search"]["history"])
    # the strategy's FLOPs are those of the thinned plan; dead-channel elimination then
    # removes what the residual sums' late members compute for nobody
    dead = report["dead_channels"]
    assert dead["flops_before"] / report["flops"]["full"] == pytest.approx(
        saved["strategy"]["flops_ratio"])
    assert report["flops"]["compressed"] == dead["flops_after"] <= dead["flops_before"]
    assert dead["unread_channels"] == 0


def test_bad_list_file_fails_before_any_work(tmp_path, tiny_pretrained):
    (tmp_path / "bad.list").write_text("0.5\n2\n")
    with pytest.raises(RatioListError, match="bad.list:2: ratio 2.0 is outside"):
        channel(tmp_path, tiny_pretrained, prune_option="list",
                prune_list_file=f"{tmp_path}/bad.list")


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_a_thinned_model_with_scatters_thins_again_exactly(name):
    """A chain of two channel learners: the second analyses a model whose residual members
    scatter (dead-channel elimination), prunes it again, and stays exact and rebuildable."""
    model, layers, shape = _net(name)
    gen = torch.Generator().manual_seed(0)
    keep = {layer.name: torch.randperm(layer.in_channels, generator=gen)[:layer.in_channels * 3 // 4]
            for layer in choose_layers(layers, True, False, [])}
    once, spec = thin(model, layers, keep, module_spec(model))
    assert any(hasattr(m, "out_index") for m in once.modules())
    layers2 = analyse(once, shape)
    keep2 = {layer.name: torch.randperm(layer.in_channels, generator=gen)[
        :max(1, layer.in_channels * 2 // 3)] for layer in choose_layers(layers2, True, False, [])}
    masked = copy.deepcopy(once)
    mask_inputs(masked, keep2, layers2)
    twice, spec = thin(masked, layers2, keep2, spec)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected = masked.eval()(x)
        assert (expected - twice.eval()(x)).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
        rebuilt = build_model(spec, base=create_net(name, **_net_kwargs(name)))
        rebuilt.load_state_dict(twice.state_dict())
        assert torch.equal(rebuilt.eval()(x), twice(x))
    assert unread_channels(twice, shape) == unread_outputs(twice, shape)      # measured alike
    assert count_flops(twice, shape) < count_flops(once, shape)


class InPlaceNet(torch.nn.Module):
    """A user's residual net written with in-place ops: ``out.add_(x)`` and an in-place ReLU
    (the sum's result is the mutated tensor, not the value fx records for the call)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.relu = torch.nn.ReLU(inplace=True)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.stem(x))
        out = self.b(self.relu(self.a(x)))
        out.add_(x)
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(out, 1), 1))


def test_in_place_sums_keep_every_channel_they_write():
    torch.manual_seed(0)
    model = InPlaceNet().eval()
    layers = analyse(model, (3, 8, 8))
    keep = {"a": torch.tensor([0, 2, 5]), "head": torch.tensor([1, 3, 4, 7])}
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep, layers)
    thinned, _ = thin(masked, layers, keep)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert (masked(x) - thinned.eval()(x)).abs().max() <= 1e-5
    # the sum couples stem and b: channel 6, which neither `a` nor `head` keeps, leaves both;
    # liveness follows the in-place sum: b computes only the 4 channels head reads after it,
    # scattered into place (stem's other 3 are read by `a`)
    assert thinned.stem.out_channels == 7 and thinned.b.out_channels == 4
    assert thinned.b.out_index.tolist() == [1, 3, 4, 6]          # head's [1, 3, 4, 7] of 8 - {6}
    assert unread_channels(thinned, (3, 8, 8)) == {} == unread_outputs(thinned, (3, 8, 8))


def test_groups_retrain_on_the_helpers_schedule_by_default(tmp_path, tiny_pretrained, caplog):
    """PocketFlow's ``cp_finetune=False`` (its default): between groups of layers the masked
    model retrains on the helper's schedule; ``cp_finetune`` makes that a short Adam run."""
    import logging
    with caplog.at_level(logging.INFO, logger="pocketflow"):
        result = channel(tmp_path, tiny_pretrained, prune_option="uniform", preserve_ratio=0.6,
                         lasso=False, list_group=10, helper=digits_helper(nb_epochs_rat=0.02))
    retrains = [r.message for r in caplog.records if r.message.startswith("group retrain")]
    assert len(retrains) == 1 and "(--cp_finetune for a short Adam fine-tune)" in retrains[0]
    _check_thinned(result)
