"""chn-pruned-rmt end to end: the classifier of the selected model keeps its trained weights
on the channels it keeps; ``refit_output=True`` refits it (``--cpr_refit_output``)."""
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
