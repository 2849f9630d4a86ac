"""Coupled residual pruning (compression/selection/residual_groups.py, ``--cpr_prune_residual``): the
readers of a residual stream keep the same channels, chosen once over all of them, so whole
residual channels leave every member, shortcut, BN and reader."""
from __future__ import annotations

import copy

import pytest
import torch

from compression.selection.criteria import SelectionOptions
from compression.graph.layers import choose_layers
from compression.surgery.dead_channels import unread_outputs
from compression.graph.layers import analyse
from compression.selection.residual_groups import coupled_keep, residual_groups
from compression.surgery.thinning import mask_inputs, thin
from nets.registry import create_net
from tests.conftest import compress_digits
from tests.zoo.nets import INPUT_SHAPE, ZOO, randomise_bn
from utils.model_stats import count_flops

SHAPE = (3, 8, 8)


def _resnet20():
    torch.manual_seed(0)
    model = create_net("resnet20", num_classes=10, in_channels=3).eval()
    randomise_bn(model)
    layers = analyse(model, SHAPE)
    return model, layers, choose_layers(layers, True, False, [])


def test_resnet20_has_one_group_per_stage_with_every_reader_of_the_stream():
    _, layers, chosen = _resnet20()
    groups = residual_groups(layers, chosen)
    assert sorted(len(g.roots) for g in groups) == [16, 32, 64]
    readers = {len(g.roots): set(g.readers) for g in groups}
    assert readers[16] == {"layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1",
                           "layer2.0.conv1", "layer2.0.shortcut.0"}
    assert readers[64] == {"layer3.1.conv1", "layer3.2.conv1", "fc"}
    # a skipped reader keeps the whole stream: no group for it
    without_fc = [layer for layer in chosen if layer.name != "fc"]
    assert sorted(len(g.roots) for g in residual_groups(layers, without_fc)) == [16, 32]


@pytest.mark.parametrize("criterion", ["l1", "lasso"])
def test_coupled_keep_shrinks_every_member_and_stays_exact(criterion):
    model, layers, chosen = _resnet20()
    batches = [torch.randn(16, *SHAPE)]
    counts = {layer.name: layer.in_channels // 2 for layer in chosen}
    keep, records = coupled_keep(model, layers, chosen, counts, batches, criterion,
                                 SelectionOptions(nb_crops_per_smpl=4))
    assert sorted(r["kept"] for r in records) == [8, 16, 32]
    assert len(keep) == 5 + 4 + 3
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep)
    thinned, _ = thin(masked, layers, keep)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert (masked(x) - thinned.eval()(x)).abs().max() <= 1e-5 * masked(x).abs().max()
    # the whole stream shrinks: stem, every block's last conv and BN, shortcuts, readers
    assert thinned.conv1.out_channels == thinned.bn1.num_features == 8
    assert all(getattr(thinned, f"layer{s}")[b].conv2.out_channels == w
               for s, w in ((1, 8), (2, 16), (3, 32)) for b in range(3))
    assert thinned.layer2[0].shortcut[0].out_channels == 16
    assert thinned.fc.in_features == 32 and unread_outputs(thinned, SHAPE) == {}
    # the same count per layer, chosen one reader at a time, keeps more of each stream
    gen = torch.Generator().manual_seed(0)
    separate = {name: torch.randperm(layers_in, generator=gen)[:count]
                for name, count, layers_in in ((layer.name, counts[layer.name], layer.in_channels)
                                               for layer in chosen if layer.name in keep)}
    apart, _ = thin(model, layers, separate)
    assert count_flops(thinned, SHAPE) < count_flops(apart, SHAPE)


@pytest.mark.parametrize("criterion", ["l1", "lasso"])
def test_group_criteria_drop_channels_no_reader_uses(criterion):
    model, layers, chosen = _resnet20()
    group = next(g for g in residual_groups(layers, chosen) if len(g.roots) == 16)
    dead = [1, 4, 9, 12]                                 # positions in the group's root order
    with torch.no_grad():
        for name, cols in group.columns.items():
            weight = model.get_submodule(name).weight
            weight[:, [cols[k] for k in dead]] = 0.0
    counts = {layer.name: 12 for layer in chosen}
    keep, _ = coupled_keep(model, layers, chosen, counts, [torch.randn(32, *SHAPE)],
                           criterion, SelectionOptions(nb_crops_per_smpl=4))
    for name, cols in group.columns.items():
        assert keep[name].tolist() == sorted(cols[k] for k in range(16) if k not in dead)


def test_groups_of_the_zoo_nets():
    found = {}
    for name, net in ZOO.items():
        layers = analyse(net().eval(), INPUT_SHAPE)
        found[name] = [(len(g.roots), sorted(g.readers)) for g in
                       residual_groups(layers, choose_layers(layers, True, False, []))]
    assert found["se"] == [(16, ["expand.0", "head.0"])]          # the inverted residual
    assert found["conv1d"] == [(16, ["conv_a.0", "down.0"])]
    assert found["grouped"] == [(16, ["reduce.0", "shortcut.0"])]  # a block's input
    assert found["inception"] == [(16, ["b1.0", "b2.0.0", "b3.1.0"])]  # what all branches read
    # DenseNet's concatenations are read by ever more layers; the split stem is fixed
    assert found["dense"] == [] and found["split"] == []


def test_prune_residual_end_to_end(tmp_path, tiny_pretrained):
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", prune_residual=True,
                             prune_ratio=0.5, nb_smpls=128, export_format="none")
    report = result.report
    assert sorted(g["channels"] for g in report["residual_groups"]) == [16, 32, 64]
    assert sorted(g["kept"] for g in report["residual_groups"]) == [8, 16, 32]
    model = result.model
    assert model.conv1.out_channels == 8 and model.layer3[2].conv2.out_channels == 32
    assert report["dead_channels"]["unread_channels"] == 0
    assert report["flops"]["compressed"] == count_flops(model.cpu(), (1, 8, 8))
    plain = compress_digits(tmp_path / "apart", tiny_pretrained, "chn-pruned-rmt",
                            prune_ratio=0.5, nb_smpls=128, export_format="none",
                            prune_residual=False).report
    assert report["flops"]["compressed"] < plain["flops"]["compressed"]


def test_the_search_scores_roll_outs_with_residual_groups(tmp_path, tiny_pretrained, monkeypatch):
    """optimal (DDPG) with prune_residual: every roll-out is scored on the architecture the
    learner delivers (each stream cut as one group, then thinned), and the chosen strategy
    meets the FLOPs budget with every stream at one width."""
    import learners.channel.base as base

    scored = []
    original = base.ChannelLearnerBase.select_all

    def spy(self, full, layers, chosen, counts, batches, sections=None, rollout=False):
        pruned, keep, stats = original(self, full, layers, chosen, counts, batches, sections,
                                       rollout)
        if rollout:
            thinned, _ = thin(pruned, layers, keep)
            scored.append([m.out_channels for m in thinned.modules()
                           if isinstance(m, torch.nn.Conv2d)])
        return pruned, keep, stats

    monkeypatch.setattr(base.ChannelLearnerBase, "select_all", spy)
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", prune_residual=True,
                             prune_ratio_prtl="optimal", preserve_ratio=0.5, nb_smpls=64,
                             nb_rlouts=3, nb_rlouts_min=2, rl_nb_batches=1, nb_rerank=1,
                             rerank_ft_steps=2, nb_iters_feval=1, ddpg_batch_size=8,
                             export_format="none")
    rerank = result.report["strategy"]["rerank"]["candidates"]
    # 3 roll-outs, then the re-rank: uniform and the search's best (once when they coincide)
    assert len(scored) == 3 + len(rerank) and 1 <= len(rerank) <= 2
    for widths in scored:                          # ResNet-20: stem + 3 x (2 convs) per stage
        stream = [widths[0], widths[2], widths[4], widths[6]]
        assert len(set(stream)) == 1 and stream[0] < 16, widths
    report = result.report
    assert report["search"]["flops_ratio"] <= 0.5 + 1e-9
    kept = report["strategy"]["kept"]
    for group in report["residual_groups"]:                # one count per stream, reported
        assert {kept[name][0] for name in group["readers"]} == {group["kept"]}
    assert 0.45 <= report["flops"]["compressed"] / report["flops"]["full"] <= 0.5 + 1e-9
    groups = {g["channels"]: g["kept"] for g in report["residual_groups"]}
    model = result.model
    assert all(block.conv2.out_channels == groups[32] for block in model.layer2)
    assert model.conv1.out_channels == groups[16] and model.fc.in_features == groups[64]


@pytest.mark.parametrize("learner,options,criterion", [
    ("dis-chn-pruned", {"prune_ratio": 0.5, "nb_iters_block": 3, "nb_iters_layer": 2,
                        "nb_batches": 2}, "l1"),
    ("channel", {"prune_option": "uniform", "uniform_preserve_ratio": 0.5, "nb_batches": 2,
                 "skip_last_layer": False}, "lasso"),
    ("chn-pruned-gpu", {"prune_ratio": 0.5, "nb_smpls": 128, "nb_crops_per_smpl": 4,
                        "nb_iters_pgd": 20, "nb_iters_layer": 20, "skip_ht_layers": False}, "lasso"),
])
def test_every_channel_learner_prunes_residual_groups(learner, options, criterion, tmp_path,
                                                      tiny_pretrained):
    result = compress_digits(tmp_path, tiny_pretrained, learner, prune_residual=True,
                             export_format="none", **options)
    groups = result.report["residual_groups"]
    assert {g["criterion"] for g in groups} == {criterion}
    assert sorted(g["channels"] for g in groups) == [16, 32, 64]
    model = result.model
    # every member of the stage-2 stream has the group's width
    width = next(g["kept"] for g in groups if g["channels"] == 32)
    assert width < 32 and model.layer2[0].shortcut[0].out_channels == width
    assert all(block.conv2.out_channels == width for block in model.layer2)
    assert result.report["dead_channels"]["unread_channels"] == 0




def test_a_flops_budget_counts_the_groups_at_their_count(tmp_path, tiny_pretrained):
    """uniform under a FLOPs budget: the strategy's estimate prices each group's channels at
    the group's count, so the result lands at the budget (not far below it)."""
    model, layers, chosen = _resnet20()
    from compression.budget.flops import ChannelFlops

    groups = residual_groups(layers, chosen)
    counts = {layer.name: layer.in_channels // 2 for layer in chosen}
    keep, _ = coupled_keep(model, layers, chosen, counts, [torch.randn(8, *SHAPE)], "l1",
                           SelectionOptions(nb_crops_per_smpl=2))
    keep.update({n: torch.arange(c) for n, c in counts.items() if n not in keep})
    thinned, _ = thin(model, layers, keep, eliminate=False)
    coupled = ChannelFlops(model, layers, SHAPE, groups)
    assert coupled.flops(counts) == count_flops(thinned, SHAPE)       # exact for ResNets
    assert ChannelFlops(model, layers, SHAPE).flops(counts) > coupled.flops(counts)
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", prune_residual=True,
                             preserve_ratio=0.5, nb_smpls=128, export_format="none")
    report = result.report
    assert 0.47 <= report["flops"]["compressed"] / report["flops"]["full"] <= 0.5 + 1e-9


def test_layers_after_a_group_are_selected_on_refitted_group_readers(tmp_path, tiny_pretrained,
                                                                    monkeypatch):
    """The groups' readers are refitted before the other layers are selected (then again
    after): a conv2 reading a group reader's output is fitted to what that reader will give,
    not to its masked, un-refitted weights (on the zoo's Inception net that took the accuracy
    before fine-tuning from 0.18 to 0.33 at ratio 0.5)."""
    import learners.channel.rmt as rmt

    seen = {}
    original = rmt.ChannelPrunedRmtLearner.select_final

    def spy(self, full, pruned, chosen, counts, batches, *rest):
        reader = pruned.get_submodule("layer1.0.conv1").weight.detach().clone()
        masked = full.get_submodule("layer1.0.conv1").weight.detach().clone()
        kept = (reader.abs().sum((0, 2, 3)) > 0)
        masked[:, ~kept] = 0
        seen["differs"] = float((reader - masked).abs().max())
        return original(self, full, pruned, chosen, counts, batches, *rest)

    monkeypatch.setattr(rmt.ChannelPrunedRmtLearner, "select_final", spy)
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", prune_ratio=0.5,
                             nb_smpls=64, export_format="none")
    assert seen["differs"] > 1e-3                     # refitted, not only masked
    assert [r["layer"] for r in result.report["selection"] if r["mode"] == "group"][:1] == [
        "layer1.0.conv1"]                              # the reported refit is the final one
