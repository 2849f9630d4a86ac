"""Every learner on a CUDA device (skipped without one): the run completes on the GPU, the
artifact reloads on the CPU and computes what the GPU model computed, and its ONNX export
agrees with torch. CI has no GPU; these run where one is lent."""
from __future__ import annotations

import pytest
import torch

from learners.launch import run
from nets import resnet_at_digits
from tests.conftest import flag_values
from compression.artifacts import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LEARNERS = {
    "full-prec": ("eval", []),
    "chn-pruned-rmt": ("cpr", ["--cpr_nb_smpls=128"]),
    "channel": ("cp", ["--cp_prune_option=auto", "--cp_nb_rlouts=3", "--cp_nb_rlouts_min=2",
                       "--cp_nb_batches=2", "--ddpg_batch_size=8"]),
    "chn-pruned-gpu": ("cpg", ["--cpg_nb_smpls=128", "--cpg_nb_iters_pgd=50",
                               "--cpg_nb_iters_layer=50"]),
    "weight-sparse": ("ws", ["--ws_prune_ratio_prtl=optimal", "--ws_nb_rlouts=2",
                             "--ws_nb_rlouts_min=1", "--ws_nb_iters_ft=2"]),
    "uniform": ("uql", ["--uql_enbl_rl_agent", "--uql_nb_rlouts=2", "--uql_nb_rlouts_min=1",
                        "--uql_tune_global_steps=2"]),
    "non-uniform": ("nuql", ["--nuql_weight_bits=3"]),
}


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_learner_runs_on_cuda_and_its_artifact_runs_on_cpu(tmp_path, tiny_pretrained, learner):
    prefix, extra = LEARNERS[learner]
    if learner != "full-prec":
        tiny_pretrained(tmp_path)
    paths = [] if prefix == "eval" else [
        f"--{prefix}_save_path={tmp_path}/{prefix}/model.ckpt",
        f"--{prefix}_save_path_eval={tmp_path}/{prefix}_eval/model.ckpt"]
    if prefix in ("cpr", "cp", "cpg"):
        paths.append(f"--{prefix}_save_path_ws={tmp_path}/{prefix}_ws/model.ckpt")
    values = flag_values(tmp_path, f"--learner={learner}", "--device=cuda", "--image_size=8",
                         "--nb_epochs_rat=0.05", *paths, *extra)
    report = run(resnet_at_digits.ModelHelper, values)
    assert report["accuracy"]["compressed" if learner != "full-prec" else "full"] > 0.3
    artifact = values["save_path_eval"] if prefix == "eval" else values[f"{prefix}_save_path_eval"]
    model, _ = load_model(artifact)
    x = torch.randn(16, 1, 8, 8)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 both
    try:
        with torch.no_grad():
            on_cpu = model.eval()(x)
            on_gpu = model.to("cuda")(x.to("cuda")).cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert (on_cpu - on_gpu).abs().max() <= 1e-4 * max(1.0, on_cpu.abs().max().item())
    if report.get("onnx", {}).get("max_abs_diff") is not None:
        assert report["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, report["onnx"]["max_abs_output"])
