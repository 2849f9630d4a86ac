"""chn-pruned-gpu: the L2,1 proximal selection, the masked Adam refit, and the learner end to
end (exact counts, thinned artifact, ONNX, report)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compression.selection.criteria import SELECTIONS
from compression.selection.group_prox import group_prox
from compression.selection.sampling import layer_weight, normal_equations, patches_and_targets
from compression.selection.lstsq import reconstruction_error, refit_adam, refit_closed
from learners.channel.config import CpgConfig
from compression.artifacts import load_model
from tests.conftest import compress_digits
from utils.config import ConfigError, from_flag_dict


def _problem(seed: int = 0, informative=(1, 4, 6)):
    """A conv whose output depends only on the ``informative`` input channels."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        mask = torch.zeros(8)
        mask[list(informative)] = 1.0
        conv.weight.mul_(mask[None, :, None, None])
    x = torch.randn(32, 8, 6, 6)
    noisy = nn.Conv2d(8, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        noisy.weight.copy_(conv.weight + 0.05 * torch.randn_like(conv.weight))
    patches, targets = patches_and_targets(noisy, x, conv(x).detach(), 10, torch.Generator())
    return patches, targets, layer_weight(noisy)


def test_group_prox_finds_the_informative_channels_and_zeroes_the_rest():
    patches, targets, weight = _problem()
    ptp, pty = normal_equations(patches, targets)
    keep, shrunk = group_prox(ptp, pty, weight, 3, nb_iters=300)
    assert keep.tolist() == [1, 4, 6]
    norms = shrunk.pow(2).sum(dim=(0, 2)).sqrt()
    assert float(norms[[0, 2, 3, 5, 7]].max()) == 0.0      # exactly zero after the ramp
    assert float(norms[keep].min()) > 0.0


@pytest.mark.parametrize("nb_keep", [1, 2, 5, 7, 8])
def test_group_prox_keeps_exactly_the_requested_count(nb_keep):
    patches, targets, weight = _problem(seed=nb_keep)
    keep, _ = group_prox(*normal_equations(patches, targets), weight, nb_keep, nb_iters=100)
    assert len(keep) == nb_keep and len(set(keep.tolist())) == nb_keep
    assert keep.tolist() == sorted(keep.tolist())


def test_group_prox_refuses_an_impossible_count():
    patches, targets, weight = _problem()
    with pytest.raises(ValueError, match=r"nb_keep must be in \[1, 8\]"):
        group_prox(*normal_equations(patches, targets), weight, 0)


def test_masked_adam_refit_approaches_the_closed_form():
    patches, targets, weight = _problem()
    ptp, pty = normal_equations(patches, targets)
    keep, shrunk = group_prox(ptp, pty, weight, 3, nb_iters=300)

    def error(kept_weight):
        full = torch.zeros_like(weight)
        full[:, keep] = kept_weight
        return reconstruction_error(patches, targets, full, keep)

    closed = error(refit_closed(ptp, pty, keep, 9))
    adam = error(refit_adam(ptp, pty, keep, shrunk, 1e-2, 1000))
    before = error(shrunk[:, keep])
    assert closed <= adam <= closed + 0.01, (closed, adam)
    assert adam < before                    # the refit undoes the soft-threshold's shrinkage


def test_group_prox_is_a_selection_of_chn_pruned_rmt_too():
    assert "group-prox" in SELECTIONS


@pytest.mark.parametrize("field,value", [("cpg_prune_ratio", 1.0), ("cpg_lrn_rate_adam", 0.0),
                                         ("cpg_nb_iters_layer", 0)])
def test_bad_options_name_the_flag(field, value):
    with pytest.raises(ConfigError, match=f"^--{field}:"):
        from_flag_dict(CpgConfig, {field: value}, prefix="cpg")
    with pytest.raises(ConfigError, match=f"^--{field[4:]}:"):
        CpgConfig(**{field[4:]: value})


def test_learner_prunes_exact_counts_thins_and_exports(tmp_path, tiny_pretrained):
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-gpu", prune_ratio=0.5,
                             nb_smpls=128, nb_crops_per_smpl=4, nb_iters_pgd=50, nb_iters_layer=50)
    report = result.report
    saved = json.load(open(tmp_path / "chn-pruned-gpu" / "report.json"))
    assert saved["learner"] == "chn-pruned-gpu"
    model, _ = load_model(result.artifact)
    full, _ = load_model(str(tmp_path / "eval" / "model.ckpt"))
    selected = {record["layer"]: record for record in saved["selection"]}
    assert "conv1" not in selected and "fc" not in selected       # head and tail skipped
    assert len(selected) == 20                                    # 18 + 2 shortcut convs
    for name, record in selected.items():
        width = full.get_submodule(name).weight.shape[1]
        assert record["kept"] == max(1, int(width * 0.5))
        assert model.get_submodule(name).weight.shape[1] == record["kept"], name
        assert record["rel_error"] < 1.0
    assert saved["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, saved["onnx"]["max_abs_output"])
    assert report["flops"]["compressed"] < 0.6 * report["flops"]["full"]
    assert 0.0 <= report["accuracy"]["compressed"] <= 1.0


def test_pgd_step_factors_are_the_flags():
    """PocketFlow's x1.4 / x0.7 are the defaults; other factors change the iterations."""
    patches, targets, weight = _problem()
    eqs = normal_equations(patches, targets)
    _, default = group_prox(*eqs, weight, 3, nb_iters=60)
    _, same = group_prox(*eqs, weight, 3, nb_iters=60, incr=1.4, decr=0.7)
    _, constant = group_prox(*eqs, weight, 3, nb_iters=60, incr=1.0, decr=1.0)
    assert torch.equal(default, same)
    assert float((constant - default).abs().max()) > 1e-3
    assert CpgConfig(lrn_rate_pgd_incr=1.2).selection_options().prox_lrn_rate_incr == 1.2
    with pytest.raises(ConfigError, match="^--cpg_prox_lrn_rate_incr:|^--cpg_lrn_rate_pgd_incr:"):
        from_flag_dict(CpgConfig, {"cpg_lrn_rate_pgd_incr": 0.9}, prefix="cpg")


def test_ratio_list_file_sets_each_layers_count(tmp_path, tiny_pretrained):
    """PocketFlow's ``--cpg_prune_ratio_type=list``: one pruning ratio per layer, on one
    comma-separated line."""
    ratios = [0.25 if i % 2 else 0.75 for i in range(20)]
    (tmp_path / "cpg.list").write_text(",".join(map(str, ratios)) + "\n")
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-gpu", prune_ratio_type="list",
                             prune_ratio_file=str(tmp_path / "cpg.list"), nb_smpls=64,
                             nb_crops_per_smpl=2, nb_iters_pgd=5, nb_iters_layer=5)
    full, _ = load_model(str(tmp_path / "eval" / "model.ckpt"))
    records = result.report["selection"]
    assert len(records) == 20
    for ratio, record in zip(ratios, records):
        width = full.get_submodule(record["layer"]).weight.shape[1]
        assert record["kept"] == max(1, int(width * (1.0 - ratio))), record
    with pytest.raises(ConfigError, match="^--prune_ratio_file:"):
        CpgConfig(prune_ratio_type="list")
