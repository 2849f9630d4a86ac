"""The tools open an artifact the Python API saved from a class that is no registered net:
``--base=pkg.module:Class`` rebuilds it; without it the error names the exact ``--base``."""
from __future__ import annotations

import pytest
import torch

from compression.artifacts import save_model
from tests.conftest import finish, tool
from tests.zoo.nets import UserNet
from utils.model_io import module_spec
from utils.model_stats import count_flops


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = UserNet().eval()
    path = tmp_path_factory.mktemp("api") / "model.ckpt"
    save_model(str(path), model, module_spec(model), {"input_shape": [3, 32, 32]})
    return str(path), count_flops(model, (3, 32, 32))


def test_without_base_the_error_names_the_flag_to_pass(artifact):
    proc = finish(tool("summary", f"--model={artifact[0]}"))
    assert proc.returncode == 2
    assert "pass --base=tests.zoo.nets:UserNet (the class, built with no arguments)" in proc.stderr
    assert "base=...)" not in proc.stderr and "Traceback" not in proc.stderr


def test_with_base_the_summary_counts_the_model(artifact):
    proc = finish(tool("summary", f"--model={artifact[0]}", "--base=tests.zoo.nets:UserNet"))
    assert proc.returncode == 0, proc.stderr
    assert f"= {artifact[1]:,} FLOPs" in proc.stdout


def test_a_base_that_is_not_a_module_class_is_refused(artifact):
    proc = finish(tool("summary", f"--model={artifact[0]}", "--base=tests.zoo.nets:INPUT_SHAPE"))
    assert proc.returncode == 2 and "is not an nn.Module class" in proc.stderr
    proc = finish(tool("summary", f"--model={artifact[0]}", "--base=no_such_pkg:Net"))
    assert proc.returncode == 2 and "cannot import it" in proc.stderr
