"""weight-sparse end to end on digits: exact sparsity per protocol, artifacts, search, resume."""
from __future__ import annotations

import json

import pytest
import torch
from absl import flags

from compression.artifacts import load_model
from compression.sparsity.masks import maskable_layers
from compression.artifacts import load_sparse_model
from learners.weight_sparse.config import WsConfig
from tests.conftest import compress_digits
from tests.conftest import flag_values
from utils.config import ConfigError, from_flag_dict


@pytest.fixture
def pretrained(tiny_pretrained):
    return tiny_pretrained


def ws(tmp_path, pretrained, **options):
    """weight-sparse through the Python API; outputs under ``tmp_path/weight-sparse``."""
    return compress_digits(tmp_path, pretrained, "weight-sparse", **options)


def sizes(model) -> dict[str, int]:
    return {n: m.weight.numel() for n, m in maskable_layers(model).items()}


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory, tiny_pretrained):
    pretrained = tiny_pretrained
    tmp_path = tmp_path_factory.mktemp("ws")
    options = dict(prune_ratio=0.9, prune_ratio_prtl="uniform", save_step=10)
    return tmp_path, options, ws(tmp_path, pretrained, **options)


def test_uniform_is_exact_per_layer_and_files_round_trip(uniform_run):
    tmp_path, _, result = uniform_run
    saved = json.load(open(tmp_path / "weight-sparse" / "report.json"))
    assert saved == result.report
    assert saved["learner"] == "weight-sparse"
    model, _ = load_model(result.artifact)           # a plain dense model
    for name, numel in sizes(model).items():
        zeros = int((model.get_submodule(name).weight == 0).sum())
        assert zeros == round(0.9 * numel), name
        assert saved["sparsity"]["layers"][name]["zeros"] == zeros
        assert saved["sparsity"]["layers"][name]["target_zeros"] == zeros
    assert saved["sparsity"]["sparsity"] == pytest.approx(0.9, abs=1e-4)
    for layout in ("coo", "csr"):
        entry = saved["sparse_files"][layout]
        assert entry["max_abs_diff"] == 0.0
        assert entry["bytes"] < 0.3 * saved["bytes_on_disk"]["full"]
        loaded, _ = load_sparse_model(entry["path"])
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    assert saved["bytes_on_disk"]["compressed"] == saved["sparse_files"]["csr"]["bytes"]
    assert saved["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, saved["onnx"]["max_abs_output"])
    for key in ("full", "compressed_before_finetune", "compressed"):
        assert 0.0 <= saved["accuracy"][key] <= 1.0


def test_resume_after_the_end_keeps_the_masks(uniform_run, tmp_path):
    """A run resumed from its final checkpoint trains no further and reproduces the sparse
    model: the masks came back with the checkpoint."""
    run_dir, options, result = uniform_run
    again = ws(run_dir, lambda _: None, resume=True, **options).report
    assert again["accuracy"]["compressed"] == result.report["accuracy"]["compressed"]
    assert again["sparsity"]["layers"] == result.report["sparsity"]["layers"]


@pytest.mark.parametrize("protocol,schedule", [("heurist", "oneshot"), ("global", "agp")])
def test_overall_sparsity_is_exact(tmp_path, pretrained, protocol, schedule):
    report = ws(tmp_path, pretrained, prune_ratio=0.75, prune_ratio_prtl=protocol,
                schedule=schedule).report
    sparsity = report["sparsity"]
    assert sparsity["zeros"] == round(0.75 * sparsity["numel"])
    if protocol == "heurist":                    # bigger layers lose more (ratio ~ log size)
        layers = sparsity["layers"]
        assert layers["layer3.2.conv2"]["sparsity"] > layers["layer1.0.conv1"]["sparsity"]
        assert layers["layer1.0.conv1"]["sparsity"] > layers["conv1"]["sparsity"]


def test_list_protocol_prunes_the_listed_fractions(tmp_path, pretrained):
    """The element-granularity list tools.sensitivity writes (fraction PRUNED per layer)."""
    from compression.budget.ratio_list import write_ratio_list
    from nets.registry import create_net

    names = list(maskable_layers(create_net("resnet20", num_classes=10, in_channels=1)))
    ratios = {name: (0.3 if i % 2 else 0.8) for i, name in enumerate(names)}
    write_ratio_list(str(tmp_path / "ws.list"), ratios, "fraction of weights pruned")
    report = ws(tmp_path, pretrained, prune_ratio_prtl="list", schedule="oneshot",
                prune_list_file=f"{tmp_path}/ws.list").report
    for name, ratio in ratios.items():
        layer = report["sparsity"]["layers"][name]
        assert layer["zeros"] == round(ratio * layer["numel"]), name


def test_optimal_search_respects_the_budget_and_resumes(tmp_path, pretrained):
    options = dict(prune_ratio=0.8, prune_ratio_prtl="optimal", nb_rlouts=3, nb_rlouts_min=2,
                   nb_iters_ft=2, nb_iters_rg=2, nb_iters_feval=1, ddpg_batch_size=8)
    report = ws(tmp_path, pretrained, **options).report
    sparsity = report["sparsity"]
    assert sparsity["zeros"] == round(0.8 * sparsity["numel"])
    assert len(report["search"]["history"]) == 3
    assert report["search"]["seconds_per_rollout"] > 0
    ratios = [v["sparsity"] for v in sparsity["layers"].values()]
    assert max(ratios) <= 0.99 + 1e-9
    # a resumed run finds the finished search and reuses its best strategy
    again = ws(tmp_path, pretrained, resume=True, **options).report
    assert again["search"]["history"] == report["search"]["history"]
    assert again["sparsity"]["layers"] == sparsity["layers"]


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"^--prune_ratio: must be in \[0, 1\)"):
        WsConfig(prune_ratio=ratio)
    with pytest.raises(ConfigError, match=r"^--ws_prune_ratio: must be in \[0, 1\)"):
        from_flag_dict(WsConfig, {"ws_prune_ratio": ratio}, prefix="ws")


def test_unknown_protocol_lists_the_valid_ones(tmp_path):
    with pytest.raises(flags.IllegalFlagValueError) as err:
        flag_values(tmp_path, "--ws_prune_ratio_prtl=best")
    for name in ("uniform", "heurist", "optimal", "global"):
        assert name in str(err.value)


def test_buffer_larger_than_the_search_is_refused():
    with pytest.raises(ConfigError, match=r"^--ws_nb_rlouts_min: must be in \[1, --ws_nb_rlouts=10\]"):
        from_flag_dict(WsConfig, {"ws_nb_rlouts": 10, "ws_nb_rlouts_min": 20}, prefix="ws")
