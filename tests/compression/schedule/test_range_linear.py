"""Distiller's range-linear formulas (q_utils.py) on hand-computed values, the bias-corrected EMA
of FakeLinearQuantization, and the schedule reader's keys for the two linear quantizers."""
from __future__ import annotations

import pytest
import torch
import yaml

from compression.quantization.range_linear import (FakeLinearQuant, asymmetric_params, symmetric_params,
                                                   weight_params)
from compression.schedule.policy import PolicyError, load_policy


def test_symmetric_params_match_distillers_convention():
    # SYMMETRIC: n = (2^8 - 1) / 2 = 127.5; RESTRICTED: n = 127; max|x| = 0 -> scale 1
    scale, zp = symmetric_params(8, torch.tensor([2.0, 0.0]))
    assert scale.tolist() == pytest.approx([127.5 / 2.0, 1.0]) and zp.tolist() == [0.0, 0.0]
    scale, _ = symmetric_params(4, torch.tensor([3.5]), restrict=True)
    assert scale.item() == pytest.approx(7 / 3.5)


def test_asymmetric_params_match_hand_computed_values():
    # [-1, 3], 8 bits: scale = 255 / 4, zero point = round(-63.75) = -64; signed: + 128
    scale, zp = asymmetric_params(8, torch.tensor(-1.0), torch.tensor(3.0))
    assert scale.item() == pytest.approx(63.75) and zp.item() == -64
    _, zp_signed = asymmetric_params(8, torch.tensor(-1.0), torch.tensor(3.0), signed=True)
    assert zp_signed.item() == 64
    # the range always contains 0: [0.5, 2] -> [0, 2]
    scale, zp = asymmetric_params(2, torch.tensor(0.5), torch.tensor(2.0))
    assert scale.item() == pytest.approx(1.5) and zp.item() == 0


def test_per_channel_weights_on_at_most_2_to_the_bits_levels():
    w = torch.tensor([[1.0, -0.5, 0.25], [0.1, 0.2, -0.4]])
    scale, zp = weight_params(w, 8, "SYMMETRIC", per_channel=True)
    assert scale.flatten().tolist() == pytest.approx([127.5, 127.5 / 0.4])
    q = torch.round(scale * w - zp)
    assert q[0].tolist() == [128.0, -64.0, 32.0]       # round half to even: 63.75 -> 64, 127.5 -> 128
    scale, zp = weight_params(w, 4, "ASYMMETRIC_UNSIGNED", per_channel=True)
    q = torch.round(scale * w - zp)
    assert q.min() >= 0 and q.max() <= 15
    assert scale.flatten().tolist() == pytest.approx([15 / 1.5, 15 / 0.6])


def test_ema_with_bias_correction_and_frozen_eval():
    q = FakeLinearQuant(8, "ASYMMETRIC_UNSIGNED", ema_decay=0.9, relu=False).train()
    values = [(-1.0, 2.0), (-3.0, 4.0), (0.0, 1.0)]
    biased_min = biased_max = 0.0
    for step, (lo, hi) in enumerate(values, start=1):
        q(torch.tensor([lo, hi, 0.5 * (lo + hi)]))
        biased_min = 0.9 * biased_min + 0.1 * lo
        biased_max = 0.9 * biased_max + 0.1 * hi
        assert q.tracked_min.item() == pytest.approx(biased_min / (1 - 0.9 ** step))
        assert q.tracked_max.item() == pytest.approx(biased_max / (1 - 0.9 ** step))
    assert q.tracked_min.item() == pytest.approx(-1.0 * 0.1 * 0.81 / (1 - 0.729) - 0.3 * 0.9 / (1 - 0.729),
                                                 rel=1e-5)
    scale = q.scale.item()
    assert scale == pytest.approx(255 / (q.tracked_max.item() - q.tracked_min.item()))
    q.eval()
    out = q(torch.tensor([100.0, -100.0]))   # clamped to the tracked range, nothing tracked
    assert q.iter_count.item() == 3
    assert out.max().item() == pytest.approx(q.tracked_max.item(), abs=1 / scale)
    assert out.min().item() == pytest.approx(q.tracked_min.item(), abs=1 / scale)


def _write(tmp_path, text):
    path = tmp_path / "q.yaml"
    path.write_text(text)
    return str(path)


def test_reader_keys_and_refusals(tmp_path):
    ok = _write(tmp_path, """quantizers:
  q:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 8
    bits_weights: 8
    mode: {activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC_RESTRICTED}
    per_channel_wts: true
    ema_decay: 0.99
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 2
""")
    inst = load_policy(ok).instances["quantizers"]["q"]
    assert inst.params["mode"]["weights"] == "SYMMETRIC_RESTRICTED" and inst.params["quantize_inputs"]
    with pytest.raises(PolicyError, match="only 32 is supported"):
        load_policy(_write(tmp_path, open(ok).read().replace("ema_decay: 0.99", "bits_accum: 16")))
    with pytest.raises(PolicyError, match="must be one of SYMMETRIC"):
        load_policy(_write(tmp_path, open(ok).read().replace(
            "{activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC_RESTRICTED}", "LINEAR")))
    ptq = """quantizers:
  p:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 8
    clip_acts: LAPLACE
"""
    with pytest.raises(PolicyError, match="LAPLACE is not supported"):
        load_policy(_write(tmp_path, ptq))
    policy = load_policy(_write(tmp_path, ptq.replace("LAPLACE", "AVG")))  # no policies: epoch 0
    assert [p.active_epochs() for p in policy.policies] == [[0]]


def write_stats(path, model, low=0.0, high=3.0):
    """A stats file in Distiller's format (module.-prefixed names, inputs / output entries)."""
    entry = {"min": low - 1, "max": high + 1, "avg_min": low, "avg_max": high, "mean": 0.5,
             "std": 1.0, "b": 0.8, "shape": "(32, 16, 8, 8)"}
    stats = {f"module.{n}": {"inputs": {0: dict(entry)}, "output": dict(entry)}
             for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)}
    path.write_text(yaml.safe_dump(stats))
    return str(path)


def test_stats_file_beside_the_schedule_and_hostile_or_missing_files(tmp_path, monkeypatch):
    """``model_activation_stats`` is read from the working directory as Distiller reads it,
    else beside the schedule; a missing file, a YAML alias bomb or a file that is not
    statistics stops with one line naming the key."""
    from compression.schedule.range_linear import load_stats

    folder = tmp_path / "schedules"
    (folder / "stats").mkdir(parents=True)
    (folder / "stats" / "s.yaml").write_text("module.relu:\n  output: {min: 0.0, max: 2.5}\n")
    schedule = folder / "ptq.yaml"

    def instance(stats: str):
        schedule.write_text("quantizers:\n  q:\n    class: PostTrainLinearQuantizer\n"
                            f"    bits_activations: 8\n    bits_parameters: 8\n"
                            f"    model_activation_stats: {stats}\n")
        return load_policy(str(schedule)).instances["quantizers"]["q"]

    monkeypatch.chdir(tmp_path)                                  # not the schedule's folder
    assert load_stats(instance("stats/s.yaml")) == {"module.relu": {"output": {"min": 0.0, "max": 2.5}}}
    with pytest.raises(PolicyError, match=r"ptq.yaml:6:\d+: quantizers.q.model_activation_stats: "
                                          r"no such statistics file 'stats/missing.yaml'"):
        load_stats(instance("stats/missing.yaml"))
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (folder / "stats" / "bomb.yaml").write_text(bomb)
    with pytest.raises(PolicyError, match="cannot read the statistics file"):
        load_stats(instance("stats/bomb.yaml"))
    (folder / "stats" / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(PolicyError, match="expected Distiller's activation statistics"):
        load_stats(instance("stats/list.yaml"))
