"""``pf.load_model`` on every kind of file a run writes, and a clear refusal of the others."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pocketflow_torch as pf
from compression.artifacts import NotAModelArtifact, save_model
from utils.checkpoint import CheckpointError
from utils.model_io import module_spec


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


def test_an_executorch_program_loads_as_a_runnable_program(tmp_path):
    pytest.importorskip("executorch")
    from deployment.pte import export_pte

    model, x = tiny(), torch.randn(3, 1, 8, 8)
    export_pte(model, x, tmp_path / "m.pte", quantized=False)
    program = pf.load_model(str(tmp_path / "m.pte"))
    with torch.no_grad():
        assert (program(x) - model(x)).abs().max() <= 1e-5


def test_an_exported_program_loads_as_a_module(tmp_path):
    model, x = tiny(), torch.randn(3, 1, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    loaded = pf.load_model(str(tmp_path / "m.pt2"))
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_a_checkpoint_still_loads_and_other_files_say_what_they_are(tmp_path):
    model, x = tiny(), torch.randn(2, 1, 8, 8)
    save_model(str(tmp_path / "m.ckpt"), model, module_spec(model))
    with torch.no_grad():
        assert torch.equal(pf.load_model(str(tmp_path / "m.ckpt"), base=tiny())(x), model(x))
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(NotAModelArtifact, match="m.onnx is an ONNX model .*not a model artifact"):
        pf.load_model(str(tmp_path / "m.onnx"))
    with pytest.raises(NotAModelArtifact, match="is a directory, not a model artifact"):
        pf.load_model(str(tmp_path))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError) as err:
        pf.load_model(str(tmp_path / "plain.pt"))
    assert "weights_only=False" not in str(err.value)
