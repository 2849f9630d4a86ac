"""chn-pruned-rmt end to end: the classifier of the selected model is refit (the default) or,
with ``refit_output=False`` (``--cpr_refit_output=false``), keeps its trained weights on the
channels it keeps; a search's roll-outs refit it either way."""
from __future__ import annotations

import os

import pytest
import torch

from compression.artifacts import load_model
from tests.conftest import compress_digits


def _matching_columns(pruned: torch.Tensor, full: torch.Tensor) -> int:
    """How many columns of ``pruned`` equal some column of ``full`` exactly."""
    return sum(any(torch.equal(column, other) for other in full.T) for column in pruned.T)


@pytest.mark.parametrize("refit_output", [False, True])
def test_the_selected_classifier_keeps_or_refits_its_weights(tmp_path, tiny_pretrained,
                                                             refit_output):
    compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", nb_smpls=64, prune_ratio=0.5,
                    refit_output=refit_output)
    full, _ = load_model(str(tmp_path / "eval" / "model.ckpt"))
    selected, _ = load_model(os.path.join(tmp_path, "chn-pruned-rmt", "ws", "model.ckpt"))
    kept = selected.fc.weight.detach()
    assert kept.shape == (10, full.fc.in_features // 2)
    matching = _matching_columns(kept, full.fc.weight.detach())
    assert matching == (0 if refit_output else kept.shape[1])


def test_rollouts_refit_the_classifier_when_the_final_model_keeps_it(tmp_path, tiny_pretrained,
                                                                     monkeypatch):
    from compression.selection import criteria

    calls = []
    real = criteria.refit_layers

    def spy(*args, trained=(), **kwargs):
        calls.append(set(trained))
        return real(*args, trained=trained, **kwargs)

    monkeypatch.setattr("learners.channel.base.refit_layers", spy)
    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", nb_smpls=64,
                             refit_output=False, prune_ratio_prtl="optimal", preserve_ratio=0.5,
                             nb_rlouts=3, nb_rlouts_min=2, rl_nb_batches=1, rerank_ft_steps=2,
                             nb_iters_feval=1, ddpg_batch_size=8)
    assert len(result.report["search"]["history"]) == 3
    # the classifier reads the last residual stream: refit in every roll-out (two refits
    # each), kept as trained in the final selection's two
    assert calls[-2:] == [{"fc"}, {"fc"}]
    assert len(calls) > 2 and all(c == set() for c in calls[:-2])
