"""chn-pruned-rmt end to end on digits: selection, thinning, fine-tune, artifacts, report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from learners.channel.config import CprConfig
from learners.launch import run
from nets import resnet_at_digits
from tests.conftest import REPO, flag_values
from utils.config import ConfigError, from_flag_dict
from compression.artifacts import load_model

ROOT = str(REPO)


def cpr_values(tmp_path, *extra: str) -> dict:
    return flag_values(tmp_path, "--learner=chn-pruned-rmt", "--nb_epochs_rat=0.05",
                       "--cpr_nb_smpls=128", "--cpr_nb_crops_per_smpl=4",
                       f"--cpr_save_path={tmp_path}/cpr/model.ckpt",
                       f"--cpr_save_path_eval={tmp_path}/cpr_eval/model.ckpt",
                       f"--cpr_save_path_ws={tmp_path}/cpr_ws/model.ckpt", *extra)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """PocketFlow's per-layer selection (each reader of a stream keeps its own channels)."""
    tmp_path = tmp_path_factory.mktemp("cpr")
    values = cpr_values(tmp_path, "--cpr_prune_residual=false")
    return tmp_path, values, run(resnet_at_digits.ModelHelper, values)


def test_the_default_prunes_residual_streams_whole(tmp_path):
    """By default every residual stream loses half its channels in every member, shortcut and
    reader: ResNet-20 at half width (8, 16, 32), no gathers, no scatters."""
    values = cpr_values(tmp_path, "--export_format=none", "--report_latency=false")
    report = run(resnet_at_digits.ModelHelper, values)
    model, _ = load_model(values["cpr_save_path_eval"])
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [8] * 7 + [16] * 7 + [32] * 7
    assert model.fc.in_features == 32
    assert not any(hasattr(m, "in_index") or hasattr(m, "out_index") for m in model.modules())
    assert [g["kept"] for g in report["residual_groups"]] == [8, 16, 32]
    assert report["dead_channels"]["unread_channels"] == 0
    assert abs(report["flops"]["compressed"] / report["flops"]["full"] - 0.25) < 0.01


def test_report_and_thinned_artifact(pruned_run):
    tmp_path, values, report = pruned_run
    saved = json.load(open(tmp_path / "cpr_eval" / "report.json"))
    assert saved["learner"] == "chn-pruned-rmt"
    for key in ("full", "compressed_before_finetune", "compressed"):
        assert 0.0 <= saved["accuracy"][key] <= 1.0
    assert saved["flops"]["compressed"] < 0.5 * saved["flops"]["full"]
    assert saved["params"]["compressed"] < 0.5 * saved["params"]["full"]
    assert saved["bytes_on_disk"]["compressed"] < saved["bytes_on_disk"]["full"]
    # exact kept counts: int(c_in * (1 - 0.5)) for every pruned layer, first layer untouched
    assert saved["kept_channels"]["layer1.0.conv1"] == [8, 16]
    assert saved["kept_channels"]["layer3.2.conv2"] == [32, 64]
    assert saved["kept_channels"]["fc"] == [32, 64]
    assert "conv1" not in saved["kept_channels"]
    assert saved["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, saved["onnx"]["max_abs_output"])
    assert set(saved["wall_s"]) >= {"selection", "finetune"}

    model, _ = load_model(values["cpr_save_path_eval"])
    assert model.layer1[0].conv1.weight.shape == (8, 8, 3, 3)   # inputs gathered, outputs cut
    # the stage-1 residual stream keeps the channels some reader kept; each member computes
    # only the channels some reader AFTER its sum reads (the later blocks' conv1, the next
    # stage's conv1 and shortcut), placed at their positions by a scatter (dead-channel pass)
    stream = model.conv1.weight.shape[0]
    assert 8 <= stream <= 16

    def read(module):
        return set(getattr(module, "in_index", torch.arange(stream)).tolist())

    blocks = list(model.layer1)
    after = read(model.layer2[0].conv1) | read(model.layer2[0].shortcut[0])
    not_worth = saved["dead_channels"]["not_worth"]     # left where a scatter costs more
    for i, block in enumerate(blocks):
        live = after.union(*(read(later.conv1) for later in blocks[i + 1:]))
        if f"layer1.{i}.conv2" in not_worth:
            assert block.conv2.weight.shape[0] == stream
            assert not_worth[f"layer1.{i}.conv2"] == stream - len(live)
            continue
        assert block.conv2.weight.shape == (len(live), 8, 3, 3), i
        if len(live) < stream:
            assert set(block.bn2.out_index.tolist()) == live and block.bn2.scatter_width == stream
    assert len(after) < stream and "layer1.2.conv2" not in not_worth      # the last member pays
    assert blocks[-1].conv2.weight.shape[0] == len(after)
    assert saved["dead_channels"]["unread_channels"] == sum(not_worth.values())
    assert saved["dead_channels"]["checked_by"] == "liveness"
    assert saved["dead_channels"]["flops_after"] == saved["flops"]["compressed"]
    assert sum(p.numel() for p in model.parameters()) == saved["params"]["compressed"]


def test_eval_mode_reloads_the_thinned_model(pruned_run):
    _, values, report = pruned_run
    metrics = run(resnet_at_digits.ModelHelper, {**values, "exec_mode": "eval"})
    assert metrics["accuracy"] == pytest.approx(report["accuracy"]["compressed"], abs=1e-9)


def test_warm_start_skips_selection(pruned_run):
    tmp_path, values, _ = pruned_run
    report = run(resnet_at_digits.ModelHelper, {**values, "cpr_warm_start": True,
                                                "cpr_save_path_eval": str(tmp_path / "ws2" / "m.ckpt")})
    assert "selection" not in report["wall_s"]
    ws_model, _ = load_model(values["cpr_save_path_ws"])
    assert report["params"]["compressed"] == sum(p.numel() for p in ws_model.parameters())


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"^--prune_ratio: must be in \[0, 1\)"):
        CprConfig(prune_ratio=ratio)
    with pytest.raises(ConfigError, match=r"^--cpr_prune_ratio: must be in \[0, 1\)"):
        from_flag_dict(CprConfig, {"cpr_prune_ratio": ratio}, prefix="cpr")


def test_entry_script_refuses_bad_ratio(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "nets", "resnet_at_digits_run.py"),
                           "--learner=chn-pruned-rmt", "--cpr_prune_ratio=1", "--log_dir=",
                           f"--save_path_eval={tmp_path}/m.ckpt"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2
    assert "--cpr_prune_ratio: must be in [0, 1), got 1.0" in proc.stderr


def test_finetune_distilled_from_the_full_model(pruned_run):
    tmp_path, values, _ = pruned_run
    report = run(resnet_at_digits.ModelHelper, {
        **values, "cpr_warm_start": True, "enbl_dst": True,
        "cpr_save_path": str(tmp_path / "dst" / "c.ckpt"),
        "cpr_save_path_eval": str(tmp_path / "dst" / "m.ckpt")})
    assert report["wall_s"]["finetune"] > 0
    assert 0.0 <= report["accuracy"]["compressed"] <= 1.0
    assert report["params"]["compressed"] < report["params"]["full"]


def test_resume_rebuilds_the_thinned_model_from_the_checkpoint(pruned_run):
    tmp_path, values, report = pruned_run
    resumed = run(resnet_at_digits.ModelHelper, {
        **values, "resume": True, "cpr_save_path_eval": str(tmp_path / "resumed" / "m.ckpt")})
    assert "selection" not in resumed["wall_s"]              # no new selection
    assert resumed["accuracy"]["compressed_before_finetune"] is None
    assert resumed["accuracy"]["compressed"] == pytest.approx(report["accuracy"]["compressed"])
    assert resumed["params"]["compressed"] == report["params"]["compressed"]


def test_without_dead_channel_elimination_the_report_counts_what_is_left(tmp_path, tiny_pretrained):
    from tests.conftest import compress_digits
    from utils.model_stats import count_flops

    result = compress_digits(tmp_path, tiny_pretrained, "chn-pruned-rmt", eliminate_dead=False,
                             prune_residual=False, nb_smpls=128, export_format="none")
    dead = result.report["dead_channels"]
    assert dead["removed"] == {} and dead["flops_before"] == dead["flops_after"]
    assert dead["unread_channels"] > 0          # residual members computing for nobody
    assert not any(hasattr(m, "out_index") for m in result.model.modules())
    assert count_flops(result.model.cpu(), (1, 8, 8)) == result.report["flops"]["compressed"]
