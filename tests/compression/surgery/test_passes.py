"""Structural passes kept only where they save time (compression.surgery.passes): the timer's
record, a pass undone when its result is slower, kept when faster, and the report's section."""
from __future__ import annotations

import copy

import pytest
import torch

from compression.graph.layers import analyse, choose_layers
from compression.surgery import dead_channels
from compression.surgery.passes import PassTimer, pass_timer, timing_enabled, verdict
from compression.surgery.picks import is_scatter
from compression.surgery.thinning import mask_inputs, thin
from tests.zoo.modern import FunctionalNet
from tests.zoo.nets import INPUT_SHAPE, randomise_bn


def masked_at_half():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    randomise_bn(model)
    layers = analyse(model, INPUT_SHAPE)
    gen = torch.Generator().manual_seed(1)
    keep = {layer.name: torch.randperm(layer.in_channels, generator=gen)[:layer.in_channels // 2]
            for layer in choose_layers(layers, True, False, [])}
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep, layers)
    return masked, layers, keep


class Verdict:
    """A stand-in timer: the pass's result is ``factor`` times the time of its input."""

    def __init__(self, factor: float) -> None:
        self.factor, self.calls = factor, []

    def __call__(self, name, before, after):
        self.calls.append((name, before, after))
        ms = {"before": {"bs1": 1.0}, "after": {"bs1": self.factor}}
        return {"pass": name, "latency_ms": ms, "kept": self.factor <= 1.0}


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_dead_channel_pass_is_kept_only_when_faster(factor):
    masked, layers, keep = masked_at_half()
    plain, _ = thin(masked, layers, keep, eliminate=False)
    timer, stats = Verdict(factor), {}
    thinned, spec = thin(masked, layers, keep, {"transforms": []}, stats=stats, timer=timer)
    assert [call[0] for call in timer.calls] == ["dead_channels"]
    assert stats["timing"]["kept"] is (factor <= 1.0)
    unread = sum(dead_channels.unread_outputs(plain, INPUT_SHAPE).values())
    assert unread > 0
    scatters = sum(is_scatter(m) for m in thinned.modules())
    if factor <= 1.0:
        assert stats["removed"] and stats["unread_channels"] < unread and scatters > 0
    else:                      # undone: the model as thinned, its unread channels measured
        assert stats["removed"] == {} and stats["unread_channels"] == unread and scatters == 0
        assert [p.shape for p in thinned.parameters()] == [p.shape for p in plain.parameters()]
    x = torch.randn(4, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(thinned(x), masked(x), atol=1e-5)
    shapes = spec["transforms"][-1]["modules"]
    for name, shape in shapes.items():
        module = thinned.get_submodule(name)
        if hasattr(module, "in_channels"):
            assert shape.get("in_channels", module.in_channels) == module.in_channels, name


def test_no_timer_call_when_the_pass_changes_nothing():
    masked, layers, keep = masked_at_half()
    timer = Verdict(2.0)
    thin(masked, layers, {}, eliminate=True, timer=timer)
    assert timer.calls == []


def test_the_real_timer_times_both_models_side_by_side():
    masked, layers, keep = masked_at_half()
    plain, _ = thin(masked, layers, keep, eliminate=False)
    record = PassTimer(INPUT_SHAPE, batch_sizes=(1, 4), repeats=2, rounds=1)("x", plain, plain)
    assert record["pass"] == "x" and set(record["latency_ms"]) == {"before", "after"}
    for side in record["latency_ms"].values():
        assert set(side) == {"bs1", "bs4"} and all(v > 0 for v in side.values())
    assert record["kept"] == verdict(record["latency_ms"]["before"], record["latency_ms"]["after"],
                                     0.02)


@pytest.mark.parametrize("after, kept", [
    ({"bs1": 1.005, "bs64": 6.8}, True),       # within 2 % at batch 1, 6.5 % faster at 64
    ({"bs1": 1.03, "bs64": 6.8}, False),       # 3 % slower at batch 1
    ({"bs1": 1.0, "bs64": 7.28}, False),       # faster nowhere
    ({"bs1": 0.9, "bs64": 7.0}, True)])
def test_the_verdict(after, kept):
    assert verdict({"bs1": 1.0, "bs64": 7.28}, after, 0.02) is kept


def test_the_environment_switch(monkeypatch):
    monkeypatch.setenv("PF_PASS_TIMING", "0")
    assert not timing_enabled() and pass_timer(INPUT_SHAPE) is None
    monkeypatch.setenv("PF_PASS_TIMING", "1")
    assert timing_enabled() and isinstance(pass_timer(INPUT_SHAPE), PassTimer)
    assert pass_timer(INPUT_SHAPE, measure=False) is None     # --report_latency=false


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_the_report_gives_each_pass_and_the_model_follows_it(factor, tmp_path, tiny_pretrained,
                                                             monkeypatch):
    """chn-pruned-rmt per layer on the tiny digits ResNet: the dead-channel pass's timing is in
    the report's ``passes`` section, and an undone pass leaves no scatter in the saved model."""
    import learners.channel.base as channel_base
    from compression.artifacts import load_model
    from tests.conftest import compress_digits

    monkeypatch.setattr(channel_base, "pass_timer", lambda shape, measure: Verdict(factor))
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", nb_smpls=64,
                             prune_residual=False, export_format="none")
    passes = result.report["passes"]
    assert [p["pass"] for p in passes] == ["dead_channels"] and passes[0]["kept"] is (factor < 1)
    assert "timing" not in result.report["dead_channels"]        # one place in the report
    model, _ = load_model(result.artifact)
    dead = result.report["dead_channels"]
    assert (sum(is_scatter(m) for m in model.modules()) > 0) is (factor < 1)
    assert bool(dead["removed"]) is (factor < 1)
    assert dead["flops_after"] == result.report["flops"]["compressed"]


def test_the_printed_report_shows_each_pass():
    from utils.report import format_report

    sides = {"full": None, "compressed": None}
    report = {"learner": "chn-pruned-rmt", "model": "m", "dataset": "d",
              "accuracy": {"full": 0.9, "compressed": 0.9}, "flops": sides, "params": sides,
              "bytes_on_disk": sides, "latency_ms": sides, "wall_s": {},
              "passes": [{"pass": "dead_channels", "kept": False,
                          "latency_ms": {"before": {"bs1": 1.0, "bs64": 8.0},
                                         "after": {"bs1": 1.1, "bs64": 8.4}}}]}
    rows = [line.split() for line in format_report(report).splitlines() if "pass" in line]
    assert rows == [["pass", "dead_channels", "bs1", "1", "1.1", "1.1", "undone", "(slower)"],
                    ["pass", "dead_channels", "bs64", "8", "8.4", "1.05", "undone", "(slower)"]]
