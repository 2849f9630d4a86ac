"""Weight masks, sparsity allocation and the COO/CSR sparse files (no training)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compression.sparsity.masks import (KeepZeros, attach_masks, detach_masks, global_nb_zeros,
                                        magnitude_mask, maskable_layers, masks_of, raw_weight,
                                        set_masks, sparsity_table)
from compression.sparsity.sparse_format import SparseFormatError, encode_state_dict
from compression.artifacts import load_sparse_model, save_sparse_model
from compression.sparsity.allocation import (MAX_LAYER_RATIO, allocate, nb_zeros_heurist,
                                             nb_zeros_uniform)
from compression.sparsity.agp import agp_fraction
from learners.weight_sparse.schedule import update_steps
from nets.registry import create_net, net_spec
from utils.checkpoint import CheckpointError, load_file, save_file
from compression.artifacts import save_model

SPEC = net_spec("resnet20", num_classes=10, in_channels=1)


def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_net("resnet20", num_classes=10, in_channels=1)


def sizes_of(model) -> list[int]:
    return [m.weight.numel() for m in maskable_layers(model).values()]


# -- masks ---------------------------------------------------------------------------------
def test_magnitude_mask_exact_count_even_with_ties():
    weight = torch.tensor([[0.5, -0.1, 0.1], [0.1, 2.0, -0.1]])
    mask = magnitude_mask(weight, 3)
    assert int((mask == 0).sum()) == 3
    assert mask[0, 0] == 1 and mask[1, 1] == 1        # the two largest stay
    ties = magnitude_mask(torch.ones(10), 4)           # all equal: still exactly 4 zeros
    assert int((ties == 0).sum()) == 4
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        magnitude_mask(torch.ones(10), 11)


def test_masks_only_on_conv_and_linear_weights():
    model = resnet20()
    masks = attach_masks(model)
    assert set(masks) == set(maskable_layers(model)) and len(masks) == 22
    keys = model.state_dict().keys()
    assert "bn1.weight" in keys and "fc.bias" in keys                   # BN and biases untouched
    assert "conv1.parametrizations.weight.original" in keys
    assert "conv1.parametrizations.weight.0.mask" in keys


@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adam"])
def test_masked_weights_stay_zero_through_many_steps(optimizer):
    model = resnet20()
    attach_masks(model)
    names = list(maskable_layers(model))
    counts = dict(zip(names, nb_zeros_uniform(sizes_of(model), 0.8)))
    set_masks(model, counts)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
           if optimizer == "sgd-momentum" else torch.optim.Adam(model.parameters(), lr=1e-2))
    torch.manual_seed(1)
    before = {n: raw_weight(model, n).detach().clone() for n in names}
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 8, 8)),
                                                 torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name in names:
        weight = model.get_submodule(name).weight
        assert int((weight == 0).sum()) == counts[name], name
    kept = masks_of(model)["layer2.0.conv1"].mask.bool()
    assert not torch.equal(raw_weight(model, "layer2.0.conv1")[kept], before["layer2.0.conv1"][kept])
    detach_masks(model)
    assert not masks_of(model)
    table = sparsity_table(model)
    assert table["zeros"] == sum(counts.values())
    assert all(table["layers"][n]["zeros"] == counts[n] for n in names)


def test_global_ranking_counts_the_smallest_weights():
    weights = {"a": torch.tensor([0.1, 5.0, 0.2, 0.3]), "b": torch.tensor([[0.05, 4.0], [3.0, 0.4]])}
    assert global_nb_zeros(weights, 3) == {"a": 2, "b": 1}   # 0.05, 0.1, 0.2
    assert global_nb_zeros(weights, 0) == {"a": 0, "b": 0}
    assert sum(global_nb_zeros(weights, 8).values()) == 8


# -- allocation ------------------------------------------------------------------------------
def test_uniform_is_exact_per_layer():
    sizes = sizes_of(resnet20())
    assert nb_zeros_uniform(sizes, 0.9) == [round(0.9 * n) for n in sizes]


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_heuristic_keeps_the_weighted_mean_and_grows_with_size(ratio):
    sizes = sizes_of(resnet20())
    counts = nb_zeros_heurist(sizes, ratio)
    assert sum(counts) == round(ratio * sum(sizes))          # parameter-weighted mean exactly p
    ratios = [c / n for c, n in zip(counts, sizes)]
    # PocketFlow's p_i = a * log(n_i), a = p * sum(n) / sum(n log n) (no layer hits the cap here)
    a = ratio * sum(sizes) / sum(n * math.log(n) for n in sizes)
    for r, n in zip(ratios, sizes):
        assert r == pytest.approx(a * math.log(n), abs=1.5 / n)
    by_size = sorted(zip(sizes, ratios))
    assert all(r1 <= r2 + 1e-9 for (_, r1), (_, r2) in zip(by_size, by_size[1:]))


def test_allocate_respects_caps_and_total():
    sizes = [100, 100, 1000]
    counts = allocate([1.0, 0.0, 0.0], sizes, 500)           # layer 0 capped, rest spills over
    assert sum(counts) == 500 and counts[0] == math.floor(MAX_LAYER_RATIO * 100)
    assert allocate([0.3, 0.3, 0.3], [10, 10, 10], 7) in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    with pytest.raises(ValueError, match="at most"):
        allocate([1, 1], [10, 10], 20)


def test_agp_ramp_values():
    assert agp_fraction(0, 10, 50, 3.0) == 0.0
    assert agp_fraction(10, 10, 50, 3.0) == 0.0
    assert agp_fraction(30, 10, 50, 3.0) == pytest.approx(1 - 0.5 ** 3)
    assert agp_fraction(50, 10, 50, 3.0) == 1.0 and agp_fraction(99, 10, 50, 3.0) == 1.0
    steps = update_steps(10, 50, 0)
    assert min(steps) == 10 and max(steps) == 50 and len(steps) == 21
    assert update_steps(10, 50, 15) == {10, 25, 40, 50}


# -- sparse files ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sparse_model():
    model = resnet20()
    attach_masks(model)
    names = list(maskable_layers(model))
    set_masks(model, dict(zip(names, nb_zeros_uniform(sizes_of(model), 0.9))))
    detach_masks(model)
    return model.eval()


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_file_round_trip_is_exact_and_small(tmp_path, sparse_model, layout):
    dense_bytes = save_model(str(tmp_path / "dense.ckpt"), sparse_model, SPEC)
    size = save_sparse_model(str(tmp_path / f"m.{layout}"), sparse_model, SPEC, layout)
    assert size < 0.25 * dense_bytes, (size, dense_bytes)      # 90 % zeros: well under half
    loaded, _ = load_sparse_model(str(tmp_path / f"m.{layout}"))
    for key, value in sparse_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), sparse_model(x))


def test_dense_weights_stay_dense():
    dense, sparse = encode_state_dict({"w": torch.randn(8, 8), "b": torch.randn(8)}, "csr")
    assert set(dense) == {"w", "b"} and not sparse


def _corrupt(tmp_path, sparse_model, layout, edit) -> str:
    path = str(tmp_path / f"m.{layout}")
    save_sparse_model(path, sparse_model, SPEC, layout)
    obj = load_file(path)
    edit(obj["sparse"]["layer2.0.conv1.weight"])
    save_file(path, "sparse_model", {k: v for k, v in obj.items()
                                     if k not in ("format", "version", "kind")})
    return path


@pytest.mark.parametrize("layout,edit,message", [
    ("coo", lambda e: e["indices"].__setitem__(0, 30000), "ascending, unique and in"),
    ("coo", lambda e: e.update(indices=e["indices"].flip(0)), "ascending"),
    ("coo", lambda e: e.update(values=e["values"][:-1]), "one index per value"),
    ("csr", lambda e: e["crow"].__setitem__(-1, 3), "row pointers"),
    ("csr", lambda e: e["col"].__setitem__(0, 999), "column indices must be in"),
    ("csr", lambda e: e.update(crow=e["crow"][:-2]), "row pointers"),
])
def test_corrupt_sparse_file_is_refused(tmp_path, sparse_model, layout, edit, message):
    path = _corrupt(tmp_path, sparse_model, layout, edit)
    with pytest.raises(SparseFormatError, match="layer2.0.conv1.weight") as err:
        load_sparse_model(path)
    assert message in str(err.value)


def test_truncated_sparse_file_is_refused(tmp_path, sparse_model):
    path = tmp_path / "m.csr"
    save_sparse_model(str(path), sparse_model, SPEC, "csr")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a valid pocketflow-torch file"):
        load_sparse_model(str(path))


def test_bn_recalibration_re_estimates_running_statistics():
    from compression.sparsity.batchnorm import recalibrate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2)).eval()
    model[0].running_mean.fill_(100.0)
    batches = [torch.randn(16, 3) * 2 + 5 for _ in range(4)]
    assert recalibrate_bn(model, [(b, None) for b in batches]) == 1
    data = torch.cat(batches)
    assert torch.allclose(model[0].running_mean, data.mean(0), atol=1e-5)
    # cumulative average of the per-batch unbiased variances
    expected_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(model[0].running_var, expected_var, atol=1e-4)
    assert not model.training and model[0].momentum == 0.1


# -- zeros held through a fine-tuning without masks (uniform-tf from a sparse start) --------
def test_keep_zeros_holds_pruned_weights_at_zero_through_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        model[0].weight[:, 0] = 0.0                     # a pruned input channel
        model[2].weight[model[2].weight.abs() < 0.02] = 0.0
    zeros = KeepZeros(model)
    pruned = [p == 0 for p in (model[0].weight, model[2].weight)]
    assert len(zeros.masks) == 2
    expected = sum(int(z.sum()) for z in pruned) / sum(z.numel() for z in pruned)
    assert abs(zeros.sparsity - expected) < 1e-12 and expected > 0.25
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(8, 2, 8, 8)).square().mean().backward()
        optimizer.step()
        zeros.on_minibatch_end(None, None)
    for param, zero in zip((model[0].weight, model[2].weight), pruned):
        assert torch.equal(param[zero], torch.zeros_like(param[zero]))
        assert bool((param[~zero] != 0).all())          # the others trained
    assert KeepZeros(nn.Linear(3, 3)).masks == []       # a dense model: nothing to hold
