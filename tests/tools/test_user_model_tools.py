"""Every tool on a user's net registered only in a test module (``tests/zoo/user_nets.py``): the
artifact loads once the helper's module is imported (``--helper=tests.zoo.user_nets:UserHelper``),
and without it the error says how to give it."""
from __future__ import annotations

import json

import pytest

import pocketflow_torch as pf
from tests.conftest import imported_for_module, tool

HELPER = "--helper=tests.zoo.user_nets:UserHelper"


@pytest.fixture(scope="module")
def user_nets():
    """``tests.zoo.user_nets`` imported (its net registered) for this module only: the registry
    holds the built-in nets alone again afterwards (other tests list them)."""
    with imported_for_module("tests.zoo.user_nets") as module:
        yield module


@pytest.fixture(scope="module")
def runs(tmp_path_factory, user_nets):
    """A trained user model (the Python API's full-prec on the user helper) and every tool
    started on it together."""
    root = tmp_path_factory.mktemp("user_tools")
    result = pf.compress(user_nets.UserHelper(), learner="full-prec", out_dir=str(root),
                         report_latency=False, export_format="none")
    model = result.artifact
    procs = {
        "summary": tool("summary", f"--model={model}", HELPER, f"--csv={root / 's.csv'}"),
        "draw": tool("draw", f"--model={model}", HELPER, f"--out={root / 'm.dot'}", "--formats="),
        "export": tool("export_onnx", f"--model={model}", HELPER, f"--out={root / 'm.onnx'}"),
        "latency": tool("latency", f"--model_a={model}", f"--model_b={model}", HELPER,
                        "--batch_sizes=1", "--threads=1", "--warmup=1", "--repeats=2"),
        "sensitivity": tool("sensitivity", f"--model={model}", HELPER, "--granularity=element",
                            "--ratios=0.5", "--max_batches=1", f"--output_dir={root / 'sens'}"),
        "deploy": tool("deploy", f"--model={model}", HELPER, "--export_format=onnx",
                       "--eval_batches=1", f"--out={root / 'deployed'}"),
        "integer_only": tool("integer_only", f"--model={model}", HELPER, "--nb_calib_batches=1",
                             f"--yaml={root / 'int8.yml'}"),
        "no_helper": tool("summary", f"--model={model}"),
    }
    return root, result, procs


@pytest.mark.parametrize("name", ["summary", "draw", "export", "latency", "sensitivity", "deploy",
                                  "integer_only"])
def test_every_tool_opens_the_users_model(runs, name):
    _, result, procs = runs
    res = _finish(procs[name])
    assert res.returncode == 0, res.stderr[-3000:]
    assert result.report["model"] == "user_dsnet"


def test_without_the_helper_the_error_says_how(runs):
    _, _, procs = runs
    res = _finish(procs["no_helper"])
    assert res.returncode == 2 and res.stderr.startswith("error: ")
    assert "unknown net 'user_dsnet'" in res.stderr
    assert "--helper=pkg.module:YourHelper" in res.stderr


def test_summary_counts_the_users_flops(runs):
    root, result, procs = runs
    assert _finish(procs["summary"]).returncode == 0
    rows = (root / "s.csv").read_text().strip().splitlines()
    assert rows[-1].startswith("total")
    assert json.loads(json.dumps(result.report))["flops"]["full"] > 0


def _finish(proc):
    from tests.conftest import finish

    return finish(proc)


def test_another_nets_full_model_is_refused(tiny_pretrained, tmp_path, user_nets):
    """--save_path_eval at the digits ResNet-20 while the helper builds the user's net: refused
    before any work, naming both architectures."""
    from utils.checkpoint import CheckpointError

    tiny_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as info:
        pf.compress(user_nets.UserHelper(), learner="chn-pruned-rmt", out_dir=str(tmp_path / "out"),
                    full_model=str(tmp_path / "eval" / "model.ckpt"), report_latency=False)
    message = str(info.value)
    assert "is not this helper's full model: its architecture is resnet20(num_classes=10, " \
           "in_channels=1), the helper builds user_dsnet(num_classes=10, in_channels=1)" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.ckpt"))
