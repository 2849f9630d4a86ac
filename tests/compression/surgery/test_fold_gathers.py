"""The fold_gathers pass (compression.surgery.passes.fold_gathers): a thinned layer that picks
its channels out of a wider tensor reads the whole tensor instead, with zero weight columns;
exact, rebuilt from its spec, kept only when the timer finds it faster, and applied by the
runner to the delivered model."""
from __future__ import annotations

import pytest
import torch

from compression.surgery.passes import fold_gathers
from compression.surgery.picks import is_gather, is_scatter
from compression.surgery.thinning import gathers_folded, thin
from tests.compression.surgery.test_passes import Verdict, masked_at_half
from tests.conftest import rebuilt_output
from tests.zoo.modern import FunctionalNet
from tests.zoo.nets import INPUT_SHAPE
from utils.model_io import module_spec
from utils.model_stats import count_flops


def thinned_with_gathers():
    masked, layers, keep = masked_at_half()
    model, spec = thin(masked, layers, keep, module_spec(masked))
    return model, spec


def test_folded_gathers_compute_the_same_and_rebuild_from_the_spec():
    model, spec = thinned_with_gathers()
    gathers = [n for n, m in model.named_modules() if is_gather(m)]
    assert gathers == ["conv2", "conv3", "conv4"]
    folded, folded_spec, names = gathers_folded(model, INPUT_SHAPE, spec)
    assert names == gathers and not any(is_gather(m) for m in folded.modules())
    assert is_scatter(folded.conv3)                         # a scatter stays
    for name in names:                                       # the whole input, zero columns
        before, after = model.get_submodule(name), folded.get_submodule(name)
        assert after.in_channels > before.in_channels
        picked = torch.zeros(after.in_channels, dtype=torch.bool)
        picked[before.in_index] = True
        assert torch.equal(after.weight[:, picked], before.weight)
        assert after.weight[:, ~picked].abs().sum() == 0
    x = torch.randn(5, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
        assert torch.equal(rebuilt_output(folded_spec, FunctionalNet(), folded, x), folded(x))
    assert count_flops(folded, INPUT_SHAPE) > count_flops(model, INPUT_SHAPE)
    assert spec["transforms"] == folded_spec["transforms"][:-1]      # the input spec untouched


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_the_fold_is_kept_only_when_faster(factor):
    model, spec = thinned_with_gathers()
    timer = Verdict(factor)
    result, result_spec, record = fold_gathers(model, spec, INPUT_SHAPE, timer)
    assert [call[0] for call in timer.calls] == ["fold_gathers"]
    assert record["kept"] is (factor < 1) and record["layers"] == ["conv2", "conv3", "conv4"]
    assert record["flops"] == {"before": count_flops(model, INPUT_SHAPE),
                               "after": count_flops(timer.calls[0][2], INPUT_SHAPE)}
    assert record["flops"]["after"] > record["flops"]["before"]
    if factor < 1:
        assert result is timer.calls[0][2] and len(result_spec["transforms"]) == 2
    else:
        assert result is model and result_spec is spec


def test_nothing_to_fold_or_no_timer_is_no_pass():
    model, spec = thinned_with_gathers()
    assert fold_gathers(model, spec, INPUT_SHAPE, None) == (model, spec, None)
    folded, folded_spec, _ = gathers_folded(model, INPUT_SHAPE, spec)
    timer = Verdict(0.5)
    assert fold_gathers(folded, folded_spec, INPUT_SHAPE, timer) == (folded, folded_spec, None)
    assert timer.calls == []


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_the_runner_delivers_the_faster_form(factor, tmp_path, tiny_pretrained, monkeypatch):
    """chn-pruned-rmt per layer (gathers on the residual streams): the saved model is the
    folded one exactly when the timer finds it faster, the report lists the pass and counts the
    FLOPs of what was saved."""
    import compression.surgery.passes as passes
    from compression.artifacts import load_model
    from tests.conftest import compress_digits

    monkeypatch.setattr(passes, "pass_timer", lambda shape, measure: Verdict(factor))
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", nb_smpls=64,
                             prune_residual=False, export_format="none")
    (record,) = [p for p in result.report["passes"] if p["pass"] == "fold_gathers"]
    assert record["kept"] is (factor < 1) and record["layers"]
    model, _ = load_model(result.artifact)
    assert any(is_gather(m) for m in model.modules()) is (factor > 1)
    flops = result.report["flops"]["compressed"]
    assert flops == record["flops"]["after" if factor < 1 else "before"]
