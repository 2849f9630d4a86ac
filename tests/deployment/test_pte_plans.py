"""ExecuTorch programs of nets whose forward fixes the batch (a channel shuffle's
``x.view(n, g, c // g, h, w)``): planned for batch 1 with a warning, and still exact."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.zoo.modern import ShuffleNetNet
from tests.zoo.nets import INPUT_SHAPE

pytest.importorskip("executorch")


def test_a_net_that_fixes_the_batch_gets_a_batch_1_plan_that_runs_any_batch(tmp_path, caplog):
    from deployment.pte import PteModel, export_pte

    torch.manual_seed(0)
    model = ShuffleNetNet().eval()
    path = tmp_path / "shuffle.pte"
    with caplog.at_level(logging.WARNING, logger="pocketflow"):
        export_pte(model, torch.zeros(2, *INPUT_SHAPE), path, quantized=False)
    assert "the .pte is planned for batch 1" in caplog.text
    program = PteModel(str(path))
    assert program.max_batch == 1 and not program.dynamic_batch
    for n in (1, 5):
        x = torch.randn(n, *INPUT_SHAPE)
        with torch.no_grad():
            assert (program(x) - model(x)).abs().max() <= 1e-5
