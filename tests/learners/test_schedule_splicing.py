"""Distiller's published ResNet-20 network-surgery schedule (``SplicingPruner`` with
``mini_batch_pruning_frequency: 1`` and ``mask_on_forward_only``; the copy in
``examples/distiller/``, epochs x 1/5) through ``--learner=schedule`` on digits: the sparsity
reached is reported, the saved model is the masked one, the ONNX export's parity passes."""
from __future__ import annotations

import json

import pytest

from compression.artifacts import load_model
from tests.conftest import REPO, finish, start_entry

SURGERY = REPO / "examples" / "distiller" / "resnet20.network_surgery.yaml"
PRUNED = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)] + \
    ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]   # the file's 20 weights (conv1, fc commented out)


@pytest.mark.slow
def test_published_network_surgery_runs_end_to_end(tmp_path):
    out = tmp_path / "s_eval"
    result = finish(start_entry(
        "resnet_at_digits_run.py", "--learner=schedule", f"--compress={SURGERY}", "--sch_nb_epochs=20",
        "--sch_epoch_iters=1", "--nb_epochs_rat=0.05", "--image_size=8", "--batch_size=32",
        "--report_latency=false", "--log_dir=", "--summ_step=10",
        f"--save_path={tmp_path}/ckpt/model.ckpt", f"--save_path_eval={tmp_path}/eval/model.ckpt",
        f"--sch_save_path={tmp_path}/s/m.ckpt", f"--sch_save_path_eval={out}/m.ckpt", cwd=tmp_path),
        timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["policy"]["instances"]["pruners"] == {"pruner1": "SplicingPruner"}
    assert report["policy"]["names"]["module.layer2.0.downsample.0.weight"] == "layer2.0.shortcut.0.weight"
    sparsity = report["sparsity"]
    assert sorted(sparsity["layers"]) == sorted(PRUNED)
    assert 0.3 < sparsity["sparsity"] < 0.95    # every named weight pruned by its thresholds
    assert all(v["zeros"] > 0 and v["target_zeros"] is None for v in sparsity["layers"].values())
    model, saved = load_model(str(out / "m.ckpt"))
    assert saved["meta"]["produces"] == ["sparse"]
    for name, layer in sparsity["layers"].items():   # the saved model is the masked one
        assert int((model.get_submodule(name).weight == 0).sum()) == layer["zeros"], name
    assert int((model.conv1.weight == 0).sum()) == 0 and int((model.fc.weight == 0).sum()) == 0
    assert report["onnx"]["parity_ok"] is True and report["parity"]["ok"] is True
    assert all(f["max_abs_diff"] == 0.0 for f in report["sparse_files"].values())
    assert report["bytes_on_disk"]["compressed"] < report["bytes_on_disk"]["full"]
