"""Distiller's SplicingPruner (dynamic network surgery) and the mini-batch policy args:
thresholds and masks against Distiller's formulas computed by hand
(distiller/pruning/splicing_pruner.py:53-57, 70-76, 91-94), the mini-batch steps of
``PruningPolicy.on_minibatch_begin`` (distiller/policy.py:212-232), the straight-through /
double-copy behaviour of ``mask_on_forward_only``, and the refusals."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compression.schedule.policy import PolicyError, load_policy
from compression.schedule.scheduler import CompressionScheduler
from compression.schedule.splicing import SpliceMask
from compression.sparsity.masks import WeightMask, masks_of, raw_weight
from training.trainer import StepState

SHAPE = (1, 4, 4)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))


def write(tmp_path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


SPLICING = """pruners:
  dns:
    class: SplicingPruner
    low_thresh_mult: 0.9
    hi_thresh_mult: 1.1
    sensitivity_multiplier: MULT
    sensitivities: {3.weight: 0.5}
policies:
  - pruner:
      instance_name: dns
      args: ARGS
    starting_epoch: 2
    ending_epoch: 5
"""


def scheduler_for(tmp_path, args: str, mult: float = 0.5, iters: int = 1):
    model = tiny()
    policy = load_policy(write(tmp_path, SPLICING.replace("ARGS", args).replace("MULT", str(mult))))
    scheduler = CompressionScheduler(policy, model, SHAPE, iters)
    scheduler.set_segment(model, 0)
    return model, scheduler


# -- Distiller's formulas, by hand ----------------------------------------------------------------
def hand_thresholds(values: list[float], sensitivity: float, low_mult: float, hi_mult: float):
    """splicing_pruner.py:70-76: mean and (unbiased) std of |w|, then (mean + std * s) * mult."""
    a = [abs(v) for v in values]
    mean = sum(a) / len(a)
    std = (sum((x - mean) ** 2 for x in a) / (len(a) - 1)) ** 0.5
    base = mean + std * sensitivity
    return base * low_mult, base * hi_mult


def hand_mask(values: list[float], previous: list[float], low: float, hi: float) -> list[float]:
    """splicing_pruner.py:91-94: 0 if low > |w|; 1 if hi <= |w| (last); else the previous mask."""
    out = []
    for value, mask in zip(values, previous):
        mask = 0.0 if low > abs(value) else mask
        mask = 1.0 if hi <= abs(value) else mask
        out.append(mask)
    return out


def clear_of(values: list[float], *thresholds: float) -> None:
    """No value within float32 rounding of a threshold (the hand masks are then exact)."""
    for t in thresholds:
        assert min(abs(abs(v) - t) for v in values) > 1e-4 * t


def test_thresholds_and_masks_follow_distillers_formulas(tmp_path):
    """Three updates at epochs 2, 3, 4 (sensitivity 0.5 x 1, 1.25, 1.5): the statistics are the
    first update's, weights between the thresholds keep their mask, and a weight pruned at
    epoch 3 is spliced back at epoch 4 once it has grown past the high threshold."""
    model, scheduler = scheduler_for(tmp_path, "{mask_on_forward_only: true, use_double_copies: true}")
    raw = raw_weight(model, "3")
    assert isinstance(masks_of(model)["3"], SpliceMask)
    initial = raw.detach().flatten().tolist()
    previous = [1.0] * len(initial)
    low_of = {e: hand_thresholds(initial, 0.5 * ((e - 2) * 0.5 + 1), 0.9, 1.1) for e in (2, 3, 4)}
    (_, _, pruner), = scheduler.pruners

    # epoch 2: the dense weights
    low, hi = low_of[2]
    assert pruner.thresholds("3", raw, 2) == pytest.approx((low, hi), rel=1e-6)
    clear_of(initial, low, hi)
    scheduler.fire(2)
    expected = hand_mask(initial, previous, low, hi)
    assert masks_of(model)["3"].mask.flatten().tolist() == expected
    assert 0 < sum(expected) < len(expected)
    grown = max(range(len(initial)), key=lambda i: abs(initial[i]))   # kept, then pruned, then back
    assert expected[grown] == 1.0

    # epoch 3: the largest weight shrinks to 0 (pruned); a pruned and a kept weight are put between
    # the thresholds (each keeps its mask); the statistics stay those of epoch 2's weights
    low, hi = low_of[3]
    values = list(initial)
    middle = (low + hi) / 2
    pruned = next(i for i, m in enumerate(expected) if m == 0.0)
    kept = next(i for i, m in enumerate(expected) if m == 1.0 and i != grown)
    values[grown], values[pruned], values[kept] = 0.0, -middle, middle
    with torch.no_grad():
        raw.copy_(torch.tensor(values).view_as(raw))
    values = raw.detach().flatten().tolist()
    clear_of(values, low, hi)
    scheduler.fire(3)
    previous, expected = expected, hand_mask(values, expected, low, hi)
    assert masks_of(model)["3"].mask.flatten().tolist() == expected
    assert (expected[grown], expected[pruned], expected[kept]) == (0.0, 0.0, 1.0)

    # epoch 4: the pruned weight has grown past the high threshold: spliced back
    low, hi = low_of[4]
    values[grown] = 1.5 * hi
    with torch.no_grad():
        raw.copy_(torch.tensor(values).view_as(raw))
    values = raw.detach().flatten().tolist()
    clear_of(values, low, hi)
    scheduler.fire(4)
    expected = hand_mask(values, expected, low, hi)
    assert masks_of(model)["3"].mask.flatten().tolist() == expected
    assert expected[grown] == 1.0
    mean = sum(abs(v) for v in initial) / len(initial)   # the first update's statistics, kept
    std = (sum((abs(v) - mean) ** 2 for v in initial) / (len(initial) - 1)) ** 0.5
    assert scheduler.stats["3"] == pytest.approx((mean, std), rel=1e-6)
    # the forward uses the masked weights
    assert torch.equal(model[3].weight, raw * masks_of(model)["3"].mask)


def test_without_mask_on_forward_only_a_pruned_weight_never_returns(tmp_path):
    """Distiller masks the weights again after every step (scheduler.py:130): the masked weight
    is 0 at the next update, whatever the raw value behind the mask."""
    model, scheduler = scheduler_for(tmp_path, "{}")
    assert type(masks_of(model)["3"]) is WeightMask
    scheduler.fire(2)
    mask = masks_of(model)["3"].mask
    pruned = int((mask.flatten() == 0).nonzero()[0])
    with torch.no_grad():
        raw_weight(model, "3").view(-1)[pruned] = 100.0
    scheduler.fire(3)
    assert float(mask.flatten()[pruned]) == 0.0


@pytest.mark.parametrize("args,zeroed,grad_at_masked", [
    ("{mask_on_forward_only: true}", True, True),                    # the published file's
    ("{mask_on_forward_only: true, use_double_copies: true}", False, True),
    ("{mask_on_forward_only: true, mask_gradients: true}", True, False),
])
def test_masked_weights_regrow_as_in_distiller(tmp_path, args, zeroed, grad_at_masked):
    """A mini-batch of an active epoch: the raw masked weights are 0 (apply_mask) unless double
    copies are kept; the masked forward's gradient reaches them unless mask_gradients."""
    model, scheduler = scheduler_for(tmp_path, args, iters=2)
    scheduler.set_segment(model, 2)
    raw = raw_weight(model, "3")
    scheduler.on_minibatch_begin(None, StepState(0, 0, None, None))
    masked = masks_of(model)["3"].mask == 0
    assert bool(masked.any())
    assert bool((raw[masked] == 0).all()) == zeroed
    model(torch.randn(5, *SHAPE)).square().sum().backward()
    assert bool((raw.grad[masked] != 0).any()) == grad_at_masked


# -- mini-batch pruning frequency -----------------------------------------------------------------
FREQUENCY = """pruners:
  agp: {class: AutomatedGradualPruner, initial_sparsity: 0.2, final_sparsity: 0.5, weights: [0.weight]}
  dns: {class: SplicingPruner, low_thresh_mult: 0.9, hi_thresh_mult: 1.1, sensitivities: {3.weight: 0.1}}
policies:
  - pruner:
      instance_name: agp
      args: AGP
    starting_epoch: 1
    ending_epoch: 3
  - pruner:
      instance_name: dns
      args: DNS
    STEPS
"""


def count_updates(tmp_path, agp: str, dns: str, steps: str, iters: int, nb_steps: int):
    model = tiny()
    text = FREQUENCY.replace("AGP", agp).replace("DNS", dns).replace("STEPS", steps)
    scheduler = CompressionScheduler(load_policy(write(tmp_path, text)), model, SHAPE, iters)
    scheduler.set_segment(model, 0)
    calls: dict[str, list[int]] = {"agp": [], "dns": []}
    step = {"now": -1}
    for _, entry, pruner in scheduler.pruners:
        original = pruner.apply

        def apply(*a, _original=original, _name=entry.instance.name, **k):
            calls[_name].append(step["now"])
            return _original(*a, **k)
        pruner.apply = apply
    for step["now"] in range(nb_steps):
        scheduler.on_minibatch_begin(None, StepState(step["now"], 0, None, None))
    return calls, masks_of(model)


def test_mini_batch_pruning_frequency_fires_at_distillers_steps(tmp_path):
    """4 mini-batches per epoch, N = 3: the epoch events at the first mini-batch of each active
    epoch, and every mini-batch b > 0 whose global index epoch * 4 + b is a multiple of 3."""
    calls, masks = count_updates(tmp_path, "{mini_batch_pruning_frequency: 3}",
                                 "{mini_batch_pruning_frequency: 2}",
                                 "starting_epoch: 0\n    ending_epoch: 2", iters=4, nb_steps=16)
    # agp: epochs 1, 2 -> events at steps 4, 8; global 6 (epoch 1, b 2) and 9 (epoch 2, b 1)
    assert calls["agp"] == [4, 6, 8, 9]
    # dns: epochs 0, 1 -> events at 0, 4; even global indices with b > 0: 2, 6
    assert calls["dns"] == [0, 2, 4, 6]
    assert int((masks["0"].mask == 0).sum()) == round(0.5 * 18)   # AGP's exact count stays


def test_skip_first_minibatch_defers_the_first_mask_to_mini_batch_1(tmp_path):
    calls, _ = count_updates(tmp_path, "{}", "{skip_first_minibatch: true}",
                             "starting_epoch: 0\n    ending_epoch: 2", iters=4, nb_steps=8)
    assert calls["dns"] == [1, 4]    # epoch 0's event skipped, global mini-batch 1, then epoch 1
    assert calls["agp"] == [4]


def test_scheduler_state_keeps_the_splicing_statistics(tmp_path):
    model, scheduler = scheduler_for(tmp_path, "{mask_on_forward_only: true}")
    scheduler.fire(2)
    state = scheduler.state_dict()
    _, again = scheduler_for(tmp_path, "{mask_on_forward_only: true}")
    again.load_state_dict(state)
    assert again.stats == scheduler.stats and again.pruners[0][2].stats is again.stats


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,args,message", [
    ("L1RankedStructureParameterPruner_AGP", "mini_batch_pruning_frequency: 2",
     "mini_batch_pruning_frequency: 2 is not supported with L1RankedStructureParameterPruner_AGP"),
    ("AutomatedGradualPruner", "use_double_copies: true", "the other pruners' masks never regrow"),
    ("AutomatedGradualPruner", "discard_masks_at_minibatch_end: true", "is a regulariser"),
    ("SplicingPruner", "fold_batchnorm: true", "statistics of the weights themselves"),
    ("SplicingPruner", "mask_gradients: true", "mask_gradients needs mask_on_forward_only"),
    ("AutomatedGradualPruner", "mini_batch_pruning_frequency: -1", "expected an integer >= 0"),
])
def test_args_that_cannot_keep_their_meaning_are_refused(tmp_path, cls, args, message):
    keys = {"SplicingPruner": "low_thresh_mult: 0.9, hi_thresh_mult: 1.1, sensitivities: {3.weight: 0.1}",
            "AutomatedGradualPruner": "initial_sparsity: 0.1, final_sparsity: 0.5, weights: [3.weight]",
            "L1RankedStructureParameterPruner_AGP": "initial_sparsity: 0.1, final_sparsity: 0.5, "
                                                    "group_type: Filters, weights: [0.weight]"}[cls]
    text = (f"pruners:\n  p: {{class: {cls}, {keys}}}\npolicies:\n  - pruner:\n      instance_name: p\n"
            f"      args: {{{args}}}\n    starting_epoch: 0\n    ending_epoch: 2\n")
    with pytest.raises(PolicyError, match="policies\\[0\\].pruner.args.") as err:
        load_policy(write(tmp_path, text))
    assert message in str(err.value)


def test_published_network_surgery_file_reads_with_distillers_meaning():
    """The examples/distiller copy: 20 weights mapped (downsample -> shortcut), the policy's
    args kept, and the masks recomputed at every mini-batch of the active epochs 0..19."""
    from compression.schedule.names import resolve_names
    from tests.conftest import REPO, distiller_resnet20

    model = distiller_resnet20().train()
    policy = load_policy(str(REPO / "examples" / "distiller" / "resnet20.network_surgery.yaml"))
    mapped = resolve_names(policy, model)
    assert mapped["module.layer3.0.downsample.0.weight"] == "layer3.0.shortcut.0.weight"
    entry = policy.policies[0]
    assert entry.args == {"keep_mask": True, "mini_batch_pruning_frequency": 1, "mask_on_forward_only": True}
    assert entry.active_epochs() == list(range(20))
    scheduler = CompressionScheduler(policy, model, (1, 8, 8), iters_per_epoch=2)
    scheduler.set_segment(model, 0)
    (_, _, pruner), = scheduler.pruners
    assert len(pruner.mask_layers()) == 20 and pruner.straight and pruner.zero_raw
    assert all(isinstance(m, SpliceMask) for m in masks_of(model).values())
    calls = []
    original = pruner.apply
    pruner.apply = lambda *a: (calls.append(a[1]), original(*a))
    for step in range(4):
        scheduler.on_minibatch_begin(None, StepState(step, 0, None, None))
    assert calls == [0, 0, 1, 1]     # the epoch event and mini-batch 1, in epochs 0 and 1
    assert 0.0 < float(masks_of(model)["layer1.0.conv1"].mask.mean()) < 1.0
