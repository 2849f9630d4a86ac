"""Deployment files: export, parity in each runtime, refusal of files that are not the model,
missing packages, the tools.deploy command and side-by-side timing."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from deployment import formats as formats_module
from deployment.formats import FORMATS, FormatUnavailable, formats_for
from deployment.pipeline import deploy
from deployment.verify import ArtifactMismatch, verify_artifact
from learners.launch import build
from nets import resnet_at_digits
from tests.conftest import flag_values
from utils.data_loading import make_eval_loader
from compression.artifacts import save_model
from deployment.runners import time_runners
from utils.model_stats import measure_latencies, time_side_by_side
from utils.multi_gpu_wrapper import SingleProcess
from tests.conftest import REPO as REPO_PATH

REPO = str(REPO_PATH)


def helper(size: int = 8):
    return resnet_at_digits.ModelHelper(resnet_at_digits.Config(image_size=size), seed=0)


def batches_of(h, limit: int = 2) -> list:
    return list(make_eval_loader(h.build_dataset_eval(), 64))[:limit]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-init ResNet-20 at 8x8 saved as an artifact and exported to both formats."""
    root = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    h = helper()
    model = h.build_model().eval()
    save_model(str(root / "model.ckpt"), model, h.net_spec(), {"input_shape": list(h.input_shape)})
    batches = batches_of(h)
    results = deploy({"fp32": (model, str(root / "model"))}, formats_for("both"), batches,
                     batches[0][0][:2])
    return root, h, model, batches, results


def test_fp32_files_reproduce_the_model_in_their_runtimes(exported):
    root, _, model, _, results = exported
    assert set(results) == {"pte_fp32", "onnx_fp32"}
    for name, runtime in (("pte_fp32", "executorch"), ("onnx_fp32", "onnxruntime")):
        figures = results[name]
        assert figures["runtime"] == runtime and figures["parity_ok"]
        assert figures["max_abs_diff"] <= 1e-4
        assert figures["nb_samples"] == 128 and figures["top1_agreement"] == 1.0
        assert figures["accuracy"] == figures["accuracy_torch"]
        assert figures["bytes"] == os.path.getsize(figures["path"]) > 0.8 * 4 * sum(
            p.numel() for p in model.parameters())


def test_a_file_of_another_model_is_refused(exported):
    _, h, _, batches, results = exported
    torch.manual_seed(1)
    other = h.build_model().eval()
    for name in ("onnx_fp32", "pte_fp32"):
        with pytest.raises(ArtifactMismatch, match=r"does not match the model: max \|.* - torch\| ="):
            verify_artifact(results[name]["path"], other, batches)
        figures = verify_artifact(results[name]["path"], other, batches, strict=False)
        assert not figures["parity_ok"] and "does not match" in figures["mismatch"]


def test_a_file_for_other_inputs_is_refused(exported):
    _, _, model, _, results = exported
    big = batches_of(helper(16), 1)
    for name in ("pte_fp32", "onnx_fp32"):
        with pytest.raises(ArtifactMismatch, match=r"takes inputs \[b, 1, 8, 8\] but the model "
                                                   r"takes \[b, 1, 16, 16\]: it is not an export"):
            verify_artifact(results[name]["path"], model, big)


def test_int8_files_are_judged_by_accuracy(exported, monkeypatch):
    """int8 criterion: accuracy within 1 point of the PyTorch int8 model, not values."""
    _, _, model, batches, results = exported
    noisy = lambda x: model(x) + 1e-3 * torch.randn(x.shape[0], 10)  # noqa: E731
    monkeypatch.setattr("deployment.verify.reference_of", lambda m: noisy)
    figures = verify_artifact(results["onnx_fp32"]["path"], model, batches, kind="int8")
    assert figures["parity_ok"] and figures["max_abs_diff"] > 1e-4
    with pytest.raises(ArtifactMismatch, match="does not match the model"):
        verify_artifact(results["onnx_fp32"]["path"], model, batches, kind="fp32")


def test_fakequant_files_export_as_float_and_are_judged_by_decisions(tmp_path):
    """A DoReFa/PACT model (activations rounded by float ops) deploys as a float file whose
    check is the int8 one: a runtime's last-bit conv difference may move an activation on a
    rounding boundary to the next level."""
    from compression.quantization.dorefa_pact import attach_clipped_quantizers, bake_weights

    torch.manual_seed(0)
    h = helper()
    model = h.build_model()
    attach_clipped_quantizers(model, "pact", 4, 4, alpha_init=2.0)
    model = bake_weights(model).eval()
    batches = batches_of(h)
    results = deploy({"fakequant": (model, str(tmp_path / "model"))}, formats_for("onnx", ("fakequant",)),
                     batches, batches[0][0][:2])
    figures = results["onnx_fakequant"]
    assert figures["kind"] == "fakequant" and figures["parity_ok"]
    assert figures["top1_agreement"] >= 0.95
    assert abs(figures["accuracy"] - figures["accuracy_torch"]) <= 0.005


def test_missing_packages_name_the_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(formats_module.importlib.util, "find_spec",
                        lambda name: None if name in ("executorch", "onnxscript") else real(name))
    with pytest.raises(FormatUnavailable, match=r"export format 'pte' \(executorch\) needs "
                                                r"executorch, not installed: pip install -e \.\[int8\]"):
        formats_for("pte")
    with pytest.raises(FormatUnavailable, match=r"needs onnxscript, not installed: pip install -e "
                                                r"\.\[onnx\]"):
        formats_for("onnx", ("int8",))
    assert formats_for("onnx") == [FORMATS["onnx"]]
    assert formats_for("auto", ("fp32", "int8")) == []  # auto: nothing when not installed
    with pytest.raises(FormatUnavailable, match="valid: auto, none, onnx, pte, both"):
        formats_for("tflite")
    # a learner asked for a missing format fails when it is built, before any training
    values = flag_values(tmp_path, "--export_format=both")
    with pytest.raises(FormatUnavailable, match="executorch"):
        build(resnet_at_digits.ModelHelper, values, SingleProcess())
    assert not (tmp_path / "eval").exists()


def test_time_runners_measures_every_runner_side_by_side():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run(x):
            calls[name] += 1
            return x
        return run

    ms = time_runners({"a": runner("a"), "b": runner("b")}, (1, 2, 2), (1, 3), warmup=1,
                      repeats=6, rounds=3)
    assert set(ms) == {"a", "b"} and set(ms["a"]) == {"bs1", "bs3"}
    assert all(v > 0 for t in ms.values() for v in t.values())
    assert calls == {"a": 2 * 3 * (1 + 2), "b": 2 * 3 * (1 + 2)}  # 2 sizes x 3 rounds x (1 + 2)


def test_side_by_side_rounds_rotate_the_first_runner_and_models_keep_their_mode():
    order = []

    def runner(name):
        def run(x):
            order.append(name)
            return x
        return run

    time_side_by_side({"a": runner("a"), "b": runner("b"), "c": runner("c")}, (1, 2, 2), (1,),
                      warmup=0, repeats=3, rounds=3)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # one call each per round
    full, thinned = nn.Sequential(nn.Linear(4, 3), nn.Dropout()), nn.Linear(4, 3)
    thinned.eval()
    ms = measure_latencies({"full": full, "thinned": thinned}, (4,), (1, 2), warmup=0, repeats=2,
                           rounds=2)
    assert set(ms) == {"full", "thinned"} and all(set(v) == {"bs1", "bs2"} for v in ms.values())
    assert full.training and not thinned.training   # each model's own mode is restored


def tool(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tools.deploy", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_deploy_tool_exports_checks_and_refuses(exported, tmp_path):
    root, _, _, _, results = exported
    common = ["--helper=resnet_at_digits", "--helper_config=image_size=8", "--eval_batches=1"]
    done = tool(f"--model={root}/model.ckpt", f"--out={tmp_path}/m", "--export_format=onnx",
                "--latency", "--repeats=3", "--batch_sizes=1,2", *common)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    onnx = figures["files"][f"{tmp_path}/m.onnx"]
    assert onnx["parity_ok"] and onnx["max_abs_diff"] <= 1e-4 and figures["kind"] == "fp32"
    assert set(figures["latency"]["ms"]) == {"eager fp32 reference", "m.onnx"}
    assert set(figures["latency"]["ms"]["m.onnx"]) == {"bs1", "bs2"}
    # the files of one model checked against another: refused, exit status 2
    torch.manual_seed(3)
    h = helper()
    save_model(str(tmp_path / "other.ckpt"), h.build_model(), h.net_spec(), {})
    bad = tool(f"--model={tmp_path}/other.ckpt", f"--check={results['onnx_fp32']['path']}", *common)
    assert bad.returncode == 2 and "does not match the model" in bad.stderr
    pte = tool(f"--model={results['pte_fp32']['path']}", *common)
    assert pte.returncode == 2 and "is a deployment file" in pte.stderr


def test_deployed_picks_run_inside_the_xnnpack_delegate():
    """Every conv and linear product of a deployed thinned net, the one-hot picks included,
    is lowered into XNNPACK: a pick whose weight was a buffer ran in ExecuTorch's portable
    kernels, outside the delegate, and made a thinned ResNet-20's .pte 16x slower."""
    pytest.importorskip("executorch")
    from torch import nn

    from compression.quantization.int8_qat import quiet, torchao_api
    from compression.surgery.picks import GatherConv2d
    from compression.surgery.thinning import gathers_as_matrices

    conv = GatherConv2d(3, 4, 3, padding=1)
    conv.in_index = torch.tensor([5, 0, 2])
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), conv, nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    deployed = gathers_as_matrices(net, (1, 5, 5))
    assert isinstance(deployed[1], nn.Sequential)            # the one-hot form was chosen
    api = torchao_api()
    with quiet(), torch.no_grad():
        program = torch.export.export(deployed, (torch.randn(2, 1, 5, 5),))
        edge = api.lower(program, partitioner=[api.partitioner()])
    ops = [str(n.target) for n in edge.exported_program().graph.nodes if n.op == "call_function"]
    assert not [op for op in ops if "convolution" in op or "addmm" in op or "linear" in op], ops
    assert sum("executorch_call_delegate" in op for op in ops) == 1


def test_gathers_as_matrices_keep_outputs_and_state():
    """Deployed thinned nets pick channels by one-hot matrices or read the whole input with
    zero columns, whichever is smaller: same outputs, no index_select left in the export."""
    from torch import nn

    from compression.surgery.picks import GatherConv2d, GatherLinear
    from compression.surgery.thinning import gathers_as_matrices

    torch.manual_seed(0)
    conv, linear = GatherConv2d(3, 4, 3, padding=1), GatherLinear(2, 3)
    conv.in_index = torch.tensor([5, 0, 2])
    linear.in_index = torch.tensor([3, 1])
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), conv, nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), linear).eval()
    matrices = gathers_as_matrices(net, (1, 5, 5))
    x = torch.randn(7, 1, 5, 5)
    with torch.no_grad():
        assert torch.allclose(matrices(x), net(x), atol=1e-6)
    # the 3x3 conv: 4x3x9 weights + a 3x6 one-hot (126) < 4x6x9 folded (216): a 1x1 conv
    # whose weight is a parameter (XNNPACK delegates only convs with static weights), then
    # the plain conv
    pick, plain = matrices[1]
    assert type(pick) is nn.Conv2d and type(plain) is nn.Conv2d
    assert pick.weight.shape == (3, 6, 1, 1) and plain.weight.shape == (4, 3, 3, 3)
    assert pick.weight.sum() == 3 and (pick.weight.flatten(1).argmax(1) == conv.in_index).all()
    assert dict(matrices.named_parameters())["1.0.weight"] is pick.weight
    # the linear layer: 3x4 folded (12) < 3x2 + a 2x4 one-hot (14): a plain Linear
    assert type(matrices[4]) is nn.Linear and matrices[4].weight.shape == (3, 4)
    assert matrices[4].weight[:, [0, 2]].abs().sum() == 0
    assert type(net[1]) is GatherConv2d                  # the original still gathers

    def ops(model):
        graph = torch.export.export(model, (x,)).graph
        return [str(n.target) for n in graph.nodes if n.op == "call_function"]

    assert any("index_select" in op for op in ops(net))
    exported = ops(matrices)
    assert not any("index_select" in op for op in exported)
    assert sum("conv2d" in op for op in exported) == 3 and sum("linear" in op for op in exported) == 1


def test_conv1d_gathers_get_a_parameterised_pick_too():
    """A 1-D conv of a user's net is picked by a Conv1d with a parameter weight (not a buffer
    product outside the runtimes' delegates), with the same outputs."""
    from torch import nn

    from compression.surgery.picks import GatherConv1d
    from compression.surgery.thinning import gathers_as_matrices

    torch.manual_seed(0)
    conv = GatherConv1d(2, 3, 5, padding=2)
    conv.in_index = torch.tensor([4, 1])
    net = nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), conv).eval()
    deployed = gathers_as_matrices(net, (1, 7))
    pick, plain = deployed[1]
    assert type(pick) is nn.Conv1d and isinstance(pick.weight, nn.Parameter)
    assert type(plain) is nn.Conv1d and plain.weight.shape == (3, 2, 5)
    x = torch.randn(4, 1, 7)
    with torch.no_grad():
        assert torch.allclose(deployed(x), net(x), atol=1e-6)
