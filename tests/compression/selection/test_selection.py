"""Channel selection pieces: ISTA vs scikit-learn, exact counts, patches, refit, thinning."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from compression.budget.simd import block_width_note, cpu_channel_block, off_block_widths
from compression.graph.layers import choose_layers
from compression.budget.counts import nb_kept, round_to_multiple
from compression.graph.layers import GraphError, analyse
from compression.selection.ista import ista, normalised_problem, select_exact
from compression.selection.sampling import (capture, gram_and_corr, layer_weight, normal_equations,
                                            patches_and_targets)
from compression.selection.lstsq import reconstruction_error, refit_adam, refit_closed
from compression.surgery.thinning import mask_inputs, thin
from nets.registry import create_net, net_spec
from compression.artifacts import build_model
from tests.conftest import INPUT_SIZES
from tests.zoo.nets import UserNet


def lasso_problem(seed: int = 0, n: int = 300, p: int = 12):
    gen = torch.Generator().manual_seed(seed)
    design = torch.randn(n, p, generator=gen, dtype=torch.float64)
    truth = torch.zeros(p, dtype=torch.float64)
    truth[: p // 3] = torch.randn(p // 3, generator=gen, dtype=torch.float64) * 2
    target = design @ truth + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    return design, target


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1])
def test_ista_agrees_with_sklearn_lasso(alpha, seed):
    from sklearn.linear_model import Lasso

    design, target = lasso_problem(seed)
    gram, corr, scale = normalised_problem(design, target)
    gamma = alpha * design.shape[0] / float(scale)
    beta = ista(gram, corr, torch.tensor([gamma]), lrn_rate=1.0, nb_iters=3000)[0].numpy()
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(
        design.numpy(), target.numpy()).coef_
    assert np.array_equal(beta != 0, ref != 0)
    np.testing.assert_allclose(beta, ref, atol=1e-6)


def test_ista_solves_many_penalties_at_once():
    design, target = lasso_problem()
    gram, corr, _ = normalised_problem(design, target)
    gammas = torch.tensor([1e-4, 1e-2, 1e-1])
    batched = ista(gram, corr, gammas, 1.0, 200)
    for i, gamma in enumerate(gammas):
        single = ista(gram, corr, gamma.reshape(1), 1.0, 200)[0]
        assert torch.allclose(batched[i], single)
    nnz = (batched != 0).sum(dim=1)
    assert nnz[0] >= nnz[1] >= nnz[2]                 # a larger penalty is sparser


@pytest.mark.parametrize("nb_keep", range(1, 16))
def test_binary_search_keeps_exactly_the_target_count(nb_keep):
    design, target = lasso_problem(seed=3, n=500, p=16)
    gram, corr, _ = normalised_problem(design, target)
    keep, info = select_exact(gram, corr, nb_keep)
    assert len(keep) == nb_keep and len(set(keep.tolist())) == nb_keep
    assert info["rounds"] < 80


def test_selection_prefers_the_informative_channels():
    design, target = lasso_problem(seed=5, n=400, p=12)   # channels 0..3 carry the signal
    gram, corr, _ = normalised_problem(design, target)
    keep, _ = select_exact(gram, corr, 4)
    assert keep.tolist() == [0, 1, 2, 3]


def test_patches_times_weight_reproduce_the_conv_output():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=True)
    x = torch.randn(4, 6, 9, 9)
    patches, targets = patches_and_targets(conv, x, conv(x).detach(), nb_crops=7,
                                           gen=torch.Generator().manual_seed(0))
    assert patches.shape == (28, 6, 9) and targets.shape == (28, 5)
    assert reconstruction_error(patches, targets, layer_weight(conv), torch.arange(6)) < 1e-6


def test_closed_form_refit_reconstructs_at_least_as_well_as_adam():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=False)
    x = torch.randn(16, 8, 6, 6)
    patches, targets = patches_and_targets(conv, x, conv(x).detach(), 10, torch.Generator())
    keep = torch.tensor([0, 2, 3, 5])
    weight = layer_weight(conv)
    before = reconstruction_error(patches, targets, weight, keep)
    closed_w = refit_closed(*normal_equations(patches, targets), keep, 9)
    closed = reconstruction_error(patches, targets, _full(closed_w, keep, weight), keep)
    adam = reconstruction_error(patches, targets, _full(
        refit_adam(*normal_equations(patches, targets), keep, weight, 1e-3, 100), keep, weight),
        keep)
    assert closed <= adam + 1e-9 and closed < before
    print(f"relative error: masked {before:.4f}, adam {adam:.4f}, closed form {closed:.4f}")


def test_gram_from_normal_equations_equals_the_explicit_design_matrix():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, 3, padding=1, bias=False)
    x = torch.randn(6, 5, 7, 7)
    patches, targets = patches_and_targets(conv, x, torch.randn(6, 4, 7, 7), 5, torch.Generator())
    weight = layer_weight(conv)
    design = torch.einsum("mik,oik->moi", patches.double(), weight.double()).reshape(-1, 5)
    gram, corr = gram_and_corr(*normal_equations(patches, targets), weight)
    assert torch.allclose(gram, design.T @ design, rtol=1e-5)
    assert torch.allclose(corr, design.T @ targets.double().reshape(-1), rtol=1e-5)


def _full(kept_weight, keep, like):
    out = torch.zeros_like(like)
    out[:, keep] = kept_weight
    return out


def _randomise_bn(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("name", list(INPUT_SIZES))
def test_thinned_model_equals_masked_model(name, ratio):
    size = INPUT_SIZES[name]
    torch.manual_seed(0)
    kwargs = {"input_size": size} if name == "lenet" else {}
    model = create_net(name, num_classes=10, in_channels=3, **kwargs).eval()
    _randomise_bn(model)
    layers = analyse(model, (3, size, size))
    gen = torch.Generator().manual_seed(1)
    keep = {layer.name: torch.randperm(layer.in_channels, generator=gen)[:nb_kept(layer.in_channels, ratio)]
            for layer in choose_layers(layers, True, False, [])}
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep)
    spec = net_spec(name, num_classes=10, in_channels=3, **kwargs)
    thinned, thin_spec = thin(masked, layers, keep, spec)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = masked(x), thinned(x)
        assert (expected - got).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())
        reloaded = build_model(thin_spec)
        reloaded.load_state_dict(thinned.state_dict())
        assert torch.equal(reloaded.eval()(x), got)
    assert sum(p.numel() for p in thinned.parameters()) < sum(p.numel() for p in model.parameters())


def test_resnet20_dependency_modes():
    model = create_net("resnet20", num_classes=10, in_channels=3)
    layers = {layer.name: layer for layer in analyse(model, (3, 32, 32))}
    inner = layers["layer2.1.conv2"]                  # reads conv1 of its block only
    assert inner.mode == "chain" and inner.producer == "layer2.1.conv1"
    assert inner.followers == ["layer2.1.bn1"]
    assert layers["layer2.1.conv1"].mode == "gather"  # reads the residual stream
    assert layers["fc"].mode == "gather" and layers["conv1"].is_first
    assert sum(layer.mode == "chain" for layer in layers.values()) == 9


def test_skip_names_matching_nothing_warn_with_the_layer_names():
    layers = analyse(create_net("resnet20", num_classes=10), (3, 32, 32))
    with pytest.warns(UserWarning, match=r"match no prunable layer.*layer1\.0\.conv1"):
        chosen = choose_layers(layers, True, True, ["no_such_layer", "layer3"])
    names = [layer.name for layer in chosen]
    assert not any("layer3" in n for n in names) and "fc" not in names and "conv1" not in names


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:                                # data-dependent control flow
            return self.conv(x)
        return self.conv(-x)


def test_untraceable_model_gets_a_clear_error():
    with pytest.raises(GraphError, match="torch.fx cannot trace Untraceable.*PrunableLayer"):
        analyse(Untraceable(), (3, 8, 8))


def test_capture_stops_after_the_layer():
    model = create_net("resnet20", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    assert capture(model, "layer2.0.conv1", x, "input").shape == (2, 16, 32, 32)
    assert capture(model, "layer2.0.conv1", x, "output").shape == (2, 32, 16, 16)


def test_thinning_a_users_net_with_concat_and_depthwise():
    torch.manual_seed(0)
    model = UserNet().eval()
    _randomise_bn(model)
    layers = {layer.name: layer for layer in analyse(model, (3, 12, 12))}
    assert layers["left.0"].mode == "gather"          # stem's output also feeds `right`
    assert layers["expand"].mode == "gather"          # reads the concatenation
    assert layers["pw"].mode == "chain" and layers["pw"].producer == "expand"
    assert layers["pw"].followers == ["bn", "dw"]     # through BN and the depthwise conv
    assert layers["head"].mode == "gather"            # reads the residual sum
    keep = {"left.0": torch.tensor([0, 2, 5]), "expand": torch.tensor([0, 3, 8, 9, 15]),
            "pw": torch.tensor([1, 3, 4, 8, 15, 20]), "head": torch.tensor([0, 7, 9])}
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep)
    thinned, _ = thin(masked, list(layers.values()), keep)
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert (masked(x) - thinned(x)).abs().max() <= 1e-5
    assert thinned.dw.weight.shape == (6, 1, 3, 3) and thinned.bn.num_features == 6
    assert thinned.expand.weight.shape == (6, 5, 1, 1)
    assert thinned.stem.weight.shape == (8, 3, 3, 3)  # shared output: not shrunk


def test_kept_counts_round_to_a_channel_multiple():
    assert [nb_kept(c, 0.4) for c in (16, 32, 64)] == [9, 19, 38]
    assert [round_to_multiple(nb_kept(c, 0.4), c, 8) for c in (16, 32, 64)] == [8, 16, 40]
    assert round_to_multiple(3, 6, 8) == 3                # narrower than the multiple
    assert round_to_multiple(63, 64, 8) == 64             # never above the layer's width
    assert round_to_multiple(2, 64, 8) == 8               # at least one multiple


def test_kept_counts_round_to_a_simd_block():
    """A negative multiple -b: counts up to b exact, larger ones the nearest multiple of b."""
    assert [round_to_multiple(c, 64, -16) for c in (1, 9, 16, 17, 23, 24, 25, 39, 41, 63)] == \
        [1, 9, 16, 16, 16, 32, 32, 32, 48, 64]
    assert round_to_multiple(20, 20, -16) == 16           # never above the layer's width
    assert round_to_multiple(13, 16, -16) == 13           # one block wide: exact
    assert [round_to_multiple(c, 64, -8) for c in (5, 8, 11, 12, 13)] == [5, 8, 8, 16, 16]
    assert cpu_channel_block() in (8, 16)


def test_counts_between_simd_blocks_are_found_and_noted():
    kept = {"a": [20, 32], "b": [16, 32], "c": [11, 16], "d": [48, 64], "e": [43, 64]}
    assert off_block_widths(kept, 16) == {"a": 20, "e": 43}
    assert off_block_widths(kept, 8) == {"a": 20, "c": 11, "e": 43}
    assert block_width_note({"b": [16, 32], "d": [48, 64]}, 16) is None   # all whole blocks
    assert block_width_note(kept, 16) == (
        "2 of 5 pruned layers keep a channel count above 16 that is not a multiple "
        "of 16 (a: 20, e: 43): oneDNN runs them at the cost of the next multiple on "
        "this CPU; the channel learners' channel_multiple=-1 rounds counts to whole "
        "SIMD blocks (docs/speed.md)")


def test_allocation_steps_up_by_simd_blocks():
    from compression.budget.allocation import _step_up
    assert [_step_up(c, 64, -16) for c in (3, 15, 16, 32, 64)] == [4, 16, 32, 48, 64]
    assert _step_up(12, 16, -16) == 13


def test_channel_multiple_values():
    """-1: the CPU's SIMD block (as a negative multiple); 0: 8 under a latency budget, else
    exact; below -1 refused with the valid values."""
    from types import SimpleNamespace

    from learners.channel.base import ChannelLearnerBase
    from learners.channel.config import CprConfig
    from utils.config import ConfigError

    def multiple(value, budget="flops"):
        cfg = SimpleNamespace(channel_multiple=value, strategy=SimpleNamespace(budget_type=budget))
        return ChannelLearnerBase.channel_multiple.fget(SimpleNamespace(cfg=cfg))

    block = cpu_channel_block()
    assert [multiple(-1), multiple(0), multiple(0, "latency"), multiple(8)] == [-block, 1, 8, 8]
    with pytest.raises(ConfigError, match="must be -1 .* got -2"):
        CprConfig(channel_multiple=-2)


@pytest.mark.parametrize("conv, size", [
    (nn.Conv2d(3, 5, 5, padding="same"), (9, 9)),
    (nn.Conv2d(3, 5, 4, padding="same", dilation=2), (9, 9)),       # asymmetric: odd pixel last
    (nn.Conv2d(3, 5, 3, padding="valid", stride=2), (9, 9)),
    (nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"), (9, 9)),
    (nn.Conv2d(3, 5, 3, padding=2, padding_mode="circular"), (9, 9)),
    (nn.Conv1d(3, 5, 4, padding="same"), (11,)),
])
def test_patches_reproduce_convs_with_string_padding_and_padding_modes(conv, size):
    """A user's ``padding='same'`` (PocketFlow's tf.layers default in ports) or a reflect /
    circular padding: the sampled patches times the kernel give the conv's outputs exactly."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        patches, targets = patches_and_targets(conv, x, conv(x), 7, torch.Generator().manual_seed(0))
    assert patches.shape == (14, 3, conv.weight[0, 0].numel()) and targets.shape == (14, 5)
    rebuilt = torch.einsum("mck,ock->mo", patches, conv.weight.detach().reshape(5, 3, -1))
    assert (rebuilt - targets).abs().max().item() < 1e-5
