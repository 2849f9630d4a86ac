"""--learner=schedule: AGP values, LR schedules vs torch, exact sparsity, thinning parity,
DoReFa/PACT artifacts, resume, and a --compress error through the entry script."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from compression.graph.layers import analyse
from compression.sparsity.masks import detach_masks
from compression.schedule.lr import policy_lr
from compression.schedule.policy import load_policy
from compression.schedule.pruners import agp_sparsity
from compression.schedule.scheduler import CompressionScheduler
from compression.surgery.thinning import thin
from learners.schedule.learner import _bake_masks
from nets.registry import build_from_spec, net_spec
from tests.conftest import REPO, finish, start_entry
from tests.conftest import compress_digits, digits_helper
from compression.artifacts import load_quantized_model
from utils.config import ConfigError
from compression.artifacts import load_model

POLICIES = REPO / "examples" / "policies"
AGP_WEIGHTS = ["layer1.0.conv1.weight", "layer2.1.conv2.weight", "layer3.0.shortcut.0.weight", "fc.weight"]


def test_agp_values_follow_the_cubic_formula():
    s_i, s_f, t0, n, dt = 0.05, 0.8, 2, 4, 3
    for k in range(n + 1):
        t = t0 + k * dt
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert agp_sparsity(s_i, s_f, t, t0, t0 + n * dt) == pytest.approx(expected, abs=1e-12)
    assert agp_sparsity(s_i, s_f, t0, t0, t0 + n * dt) == pytest.approx(s_i, abs=1e-12)
    assert agp_sparsity(s_i, s_f, t0 + n * dt, t0, t0 + n * dt) == s_f
    assert agp_sparsity(s_i, s_f, 99, t0, t0 + n * dt) == s_f


@pytest.mark.parametrize("cls,keys,torch_cls", [
    ("StepLR", "step_size: 3\n    gamma: 0.5", lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
    ("MultiStepLR", "milestones: [2, 5, 7]\n    gamma: 0.3",
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5, 7], 0.3)),
    ("ExponentialLR", "gamma: 0.8", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.8)),
])
def test_lr_schedules_match_torch_epoch_by_epoch(tmp_path, cls, keys, torch_cls):
    path = tmp_path / "lr.yaml"
    path.write_text(f"lr_schedulers:\n  lr:\n    class: {cls}\n    {keys}\npolicies:\n"
                    "  - lr_scheduler: {instance_name: lr}\n    starting_epoch: 0\n    ending_epoch: 9\n")
    schedule = policy_lr(load_policy(str(path)), 0.2, iters_per_epoch=4, nb_epochs=12)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    reference = torch_cls(optimizer)
    for epoch in range(10):
        for step in range(4 * epoch, 4 * epoch + 4):
            assert schedule(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), epoch
        optimizer.step()
        reference.step()
    assert schedule(4 * 11) == schedule(4 * 9)  # after the policy's end: the rate reached there
    segment = schedule.segment(3, 6)
    assert segment.nb_iters == 12 and segment(0) == schedule(12) and segment(11) == schedule(23)


def sch(tmp_path, pretrained, policy, **options):
    """The schedule learner through the Python API (outputs under ``tmp_path/schedule``)."""
    return compress_digits(tmp_path, pretrained, "schedule", helper=digits_helper(batch_size=32),
                           compress=str(policy), **{"save_step": 10, "epoch_iters": 2, **options})


def test_agp_run_reaches_exact_sparsity_in_the_artifact(tmp_path, tiny_pretrained, one_thread):
    policy = tmp_path / "agp.yaml"
    policy.write_text(f"""version: 1
pruners:
  p:
    class: AutomatedGradualPruner
    initial_sparsity: 0.1
    final_sparsity: 0.7
    weights: {json.dumps(AGP_WEIGHTS)}
policies:
  - pruner: {{instance_name: p}}
    starting_epoch: 0
    ending_epoch: 2
""")
    result = sch(tmp_path, tiny_pretrained, policy, nb_epochs=4)
    report = result.report
    model, saved = load_model(result.artifact)
    assert saved["meta"]["produces"] == ["sparse"]
    for weight in AGP_WEIGHTS:
        layer = weight[: -len(".weight")]
        tensor = model.get_submodule(layer).weight
        zeros = round(0.7 * tensor.numel())
        assert int((tensor == 0).sum()) == zeros, layer
        assert report["sparsity"]["layers"][layer]["zeros"] == zeros
        assert report["sparsity"]["layers"][layer]["target_zeros"] == zeros
    assert int((model.conv1.weight == 0).sum()) == 0  # not listed: dense
    assert report["policy"]["instances"] == {"pruners": {"p": "AutomatedGradualPruner"}}
    files = report["sparse_files"]                   # COO / CSR files, exact round trip
    assert set(files) == {"coo", "csr"} and all(f["max_abs_diff"] == 0.0 for f in files.values())
    assert report["bytes_on_disk"]["compressed"] == min(f["bytes"] for f in files.values())
    assert report["bytes_on_disk"]["compressed"] < report["bytes_on_disk"]["full"]


def test_structured_masked_model_equals_the_thinned_one():
    policy = load_policy(str(POLICIES / "resnet20_digits_filters.yaml"))
    model = build_from_spec(net_spec("resnet20", num_classes=10, in_channels=1))
    for module in model.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    scheduler = CompressionScheduler(policy, model, (1, 8, 8), 1)
    scheduler.set_segment(model, 0)
    scheduler.fire(0)
    inputs = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        masked = model(inputs)
    layers = analyse(model, (1, 8, 8))
    _bake_masks(model, layers, scheduler.keep)
    thinned, spec = thin(model, layers, scheduler.keep, {"transforms": []})
    detach_masks(model)
    with torch.no_grad():
        assert float((thinned.eval()(inputs) - masked).abs().max()) <= 1e-5
    shapes = {n: tuple(p.shape) for n, p in thinned.named_parameters()}
    assert shapes["layer1.0.conv1.weight"] == (8, 16, 3, 3)
    assert shapes["layer1.0.conv2.weight"] == (16, 8, 3, 3)
    assert shapes["layer1.0.bn1.weight"] == (8,)
    assert shapes["layer3.2.conv1.weight"] == (32, 64, 3, 3)
    assert shapes["layer3.2.conv2.weight"] == (64, 32, 3, 3)
    assert sum(p.numel() for p in thinned.parameters()) < sum(p.numel() for p in model.parameters())


def test_filters_run_thins_and_resumes(tmp_path, tiny_pretrained, one_thread):
    options = {"epoch_iters": 1}
    result = sch(tmp_path, tiny_pretrained, POLICIES / "resnet20_digits_filters.yaml", **options)
    report = result.report
    assert report["thinning"]["max_abs_diff"] <= 1e-5
    assert report["params"]["compressed"] < 0.6 * report["params"]["full"]
    assert report["kept_channels"]["layer2.1.conv2"] == [16, 32]
    assert report["accuracy"]["compressed_before_finetune"] is not None
    model, saved = load_model(result.artifact)
    assert saved["meta"]["produces"] == ["thinned"]
    assert tuple(model.layer2.get_submodule("1").conv1.weight.shape) == (16, 32, 3, 3)
    again = sch(tmp_path, tiny_pretrained, POLICIES / "resnet20_digits_filters.yaml", resume=True,
                **options).report  # from the final checkpoint
    assert again["accuracy"]["compressed"] == report["accuracy"]["compressed"]
    assert again["params"]["compressed"] == report["params"]["compressed"]


@pytest.mark.parametrize("name", ["dorefa", "pact"])
def test_quantized_artifact_reloads_with_16_levels(tmp_path, tiny_pretrained, one_thread, name):
    result = sch(tmp_path, tiny_pretrained, POLICIES / f"resnet20_digits_{name}_w4a4.yaml",
                 epoch_iters=1, export_format="none")
    report = result.report
    (info,) = report["quantization"]
    assert info["method"] == name and info["weight_bits"] == 4 and info["activation_bits"] == 4
    model, saved = load_model(result.artifact)
    assert saved["meta"]["produces"] == ["quantized"]
    for layer in info["weight_layers"]:
        assert torch.unique(model.get_submodule(layer).weight).numel() <= 16, layer
    assert torch.unique(model.conv1.weight).numel() > 16  # the stem stays full precision
    reference = copy.deepcopy(model)
    reloaded, _ = load_model(result.artifact)
    inputs = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(inputs), reference.eval()(inputs))
    assert report["accuracy"]["compressed"] is not None
    # the bit-packed file: 4-bit codes, the same weights and outputs, a fraction of the bytes
    packed = report["quantized_file"]["file"]
    assert packed["round_trip_exact"] and report["bytes_on_disk"]["compressed"] == packed["bytes"]
    assert packed["bytes"] < 0.3 * report["bytes_on_disk"]["full"]
    unpacked, _ = load_quantized_model(packed["path"])
    with torch.no_grad():
        assert torch.equal(unpacked.eval()(inputs), reference(inputs))


def test_bad_policy_through_the_entry_script_exits_2(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("pruners:\n  p:\n    class: AutomatedGradualPruner\n    initial_sparsity: 0.1\n"
                      "    final_sparsity: 0.5\n    final_sparsty: 0.5\n    weights: [fc.weight]\n"
                      "policies:\n  - pruner: {instance_name: p}\n    epochs: [0]\n")
    result = finish(start_entry("resnet_at_digits_run.py", "--learner=schedule",
                                f"--compress={policy}", "--log_dir=", cwd=tmp_path), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{policy}:6:5: pruners.p: unknown key 'final_sparsty'" in result.stderr
    assert "Traceback" not in result.stderr


def test_filters_and_agp_on_two_processes(tmp_path):
    """Masks and keep dicts from rank 0; both ranks thin and train the same model."""
    import os
    import subprocess
    import sys

    policy = tmp_path / "both.yaml"
    policy.write_text((POLICIES / "resnet20_digits_filters.yaml").read_text().replace(
        "extensions:", "  agp:\n    class: AutomatedGradualPruner\n    initial_sparsity: 0.2\n"
        "    final_sparsity: 0.6\n    weights: [layer2.0.shortcut.0.weight, fc.weight]\n\n"
        "extensions:").replace(
        "  - extension:", "  - pruner:\n      instance_name: agp\n    starting_epoch: 0\n"
        "    ending_epoch: 4\n  - extension:"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "run_local.sh"), "nets/resnet_at_digits_run.py", "-n=2",
         "--mgw_backend=torch", "--learner=schedule", f"--compress={policy}", "--sch_epoch_iters=2",
         f"--save_path={tmp_path}/ckpt/model.ckpt", f"--save_path_eval={tmp_path}/eval/model.ckpt",
         "--log_dir=", "--report_latency=false", "--nb_epochs_rat=0.05", "--batch_size=32",
         "--image_size=8", "--summ_step=10", f"--sch_save_path={tmp_path}/s/m.ckpt",
         f"--sch_save_path_eval={tmp_path}/s_eval/m.ckpt"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "epochs_0_9: parameters identical on all 2 ranks" in proc.stdout
    report = json.loads((tmp_path / "s_eval" / "report.json").read_text())
    assert report["params"]["compressed"] < 0.6 * report["params"]["full"]
    fc = report["sparsity"]["layers"]["fc"]
    assert fc["zeros"] == round(0.6 * fc["numel"])


def test_regularizers_add_their_terms_in_their_epochs(tmp_path):
    path = tmp_path / "reg.yaml"
    path.write_text("""regularizers:
  l1: {class: L1Regularizer, reg_regims: {'layer1.0.conv1.weight': 0.01}}
  gl:
    class: GroupLassoRegularizer
    reg_regims: {'layer2.0.conv1.weight': [0.1, '3D'], 'fc.weight': [0.2, 'Channels']}
policies:
  - regularizer: {instance_name: l1}
    starting_epoch: 1
    ending_epoch: 3
  - regularizer: {instance_name: gl}
    epochs: [0]
""")
    from training.trainer import StepState

    model = build_from_spec(net_spec("resnet20", num_classes=10, in_channels=1))
    scheduler = CompressionScheduler(load_policy(str(path)), model, (1, 8, 8), iters_per_epoch=2)
    scheduler.set_segment(model, 0)
    w1, w2, fc = model.layer1[0].conv1.weight, model.layer2[0].conv1.weight, model.fc.weight
    l1 = 0.01 * w1.abs().sum()
    gl = 0.1 * w2.flatten(1).norm(dim=1).sum() + 0.2 * fc.t().norm(dim=1).sum()
    for step, expected in [(0, gl), (1, gl), (2, l1), (5, l1), (6, 0.0)]:
        state = StepState(step, 0, None, None, loss=torch.tensor(1.0))
        scheduler.before_backward_pass(None, state)
        expected = float(expected.detach()) if torch.is_tensor(expected) else expected
        assert float(state.loss.detach()) == pytest.approx(1.0 + expected, rel=1e-6), step


def test_three_segments_resume_from_the_last_one(tmp_path, tiny_pretrained, one_thread):
    """AGP on fc (its mask survives thinning), filters removed at epoch 1, PACT from epoch 2:
    segments epochs_0_0, epochs_1_1, epochs_2_3. A resumed run rebuilds the last segment's
    thinned architecture, its mask and its quantizers from the checkpoint and gets the same model."""
    policy = tmp_path / "three.yaml"
    policy.write_text("""version: 1
pruners:
  agp: {class: AutomatedGradualPruner, initial_sparsity: 0.2, final_sparsity: 0.5, weights: [fc.weight]}
  filters:
    class: L1RankedStructureParameterPruner
    reg_regims: {'layer1.0.conv1.weight': [0.5, '3D'], 'layer3.1.conv2.weight': [0.25, 'Channels']}
quantizers:
  pact:
    class: PACTQuantizer
    bits_weights: 4
    bits_activations: 4
    overrides: {conv1: {bits_weights: null}, fc: {bits_weights: null}}
extensions:
  thinner: {class: ChannelRemover, thinning_func_str: remove_channels}
policies:
  - pruner: {instance_name: agp}
    starting_epoch: 0
    ending_epoch: 3
  - pruner: {instance_name: filters}
    epochs: [1]
  - extension: {instance_name: thinner}
    epochs: [1]
  - quantizer: {instance_name: pact}
    starting_epoch: 2
    ending_epoch: 4
""")
    result = sch(tmp_path, tiny_pretrained, policy, export_format="none")
    report = result.report
    assert report["thinning"]["epoch"] == 1 and report["thinning"]["max_abs_diff"] <= 1e-5
    assert report["kept_channels"] == {"layer1.0.conv2": [8, 16], "layer3.1.conv2": [48, 64]}
    assert report["sparsity"]["layers"]["fc"]["zeros"] == round(0.5 * 640)
    model, saved = load_model(result.artifact)
    assert saved["meta"]["produces"] == ["quantized", "sparse", "thinned"]
    assert int((model.fc.weight == 0).sum()) == 320
    again = sch(tmp_path, tiny_pretrained, policy, export_format="none", resume=True).report
    assert again["accuracy"]["compressed"] == report["accuracy"]["compressed"]
    resumed, _ = load_model(result.artifact)
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_quantizing_agp_pruned_weights_is_refused_with_the_place(tmp_path, tiny_pretrained):
    policy = tmp_path / "both.yaml"
    policy.write_text("""version: 1
pruners:
  p: {class: AutomatedGradualPruner, initial_sparsity: 0.1, final_sparsity: 0.5,
      weights: [layer1.0.conv1.weight]}
quantizers:
  q: {class: PACTQuantizer, bits_activations: 4, bits_weights: 4}
policies:
  - pruner: {instance_name: p}
    starting_epoch: 0
    ending_epoch: 1
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 1
""")
    with pytest.raises(ConfigError, match=rf"{policy}:6:\d+: quantizers\.q: the quantizer would "
                                          r"quantize weights a fine-grained pruner masks "
                                          r"\(layer1\.0\.conv1\)"):
        sch(tmp_path, tiny_pretrained, policy)
