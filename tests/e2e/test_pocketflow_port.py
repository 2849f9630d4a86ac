"""PocketFlow's Fashion-MNIST tutorial helper, ported by rewriting its TensorFlow ops in torch
(examples/pocketflow_fmnist), through every learner on tiny gzipped idx files.

The full model is trained once by PocketFlow's documented command (``run_local.sh
..._run.py --learner full-prec``, space-separated flags, PocketFlow's own ``--nb_smpls_*``);
each learner then compresses it through ``pocketflow_torch.compress`` with the port itself.
"""
from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch

from tests.conftest import run_local, synthetic_fmnist

ENTRY = "examples/pocketflow_fmnist/convnet_at_fmnist_run.py"
N_TRAIN, N_VAL, N_TEST = 400, 100, 200


def _write_fmnist_gz(root):
    """PocketFlow's files: the four idx files, gzipped."""
    root.mkdir(parents=True)
    for split, n, seed in (("train", N_TRAIN, 1), ("t10k", N_TEST, 2)):
        images, labels = synthetic_fmnist(n, seed)
        for kind, magic, array in (("images", 2051, images), ("labels", 2049, labels)):
            header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            with gzip.open(root / f"{split}-{kind}-idx{array.ndim}-ubyte.gz", "wb") as fh:
                fh.write(header + array.tobytes())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data dir, the full model's artifact, its report) from PocketFlow's command line."""
    root = tmp_path_factory.mktemp("pocketflow_port")
    data = root / "fmnist"
    _write_fmnist_gz(data)
    proc = run_local(ENTRY, "--learner", "full-prec", "--data_dir_local", str(data),
                     f"--nb_smpls_train={N_TRAIN}", f"--nb_smpls_val={N_VAL}",
                     f"--nb_smpls_eval={N_TEST}", "--batch_size=32", "--nb_epochs_rat=0.02",
                     f"--save_path={root}/ckpt/model.ckpt", f"--save_path_eval={root}/eval/model.ckpt",
                     "--log_dir=", "--report_latency=false", timeout=600,
                     env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "note:" not in proc.stderr      # the port defines nb_smpls_*: no flag is translated
    # PocketFlow's schedule: 160 epochs x 0.02 of 400 samples at batch 32 -> 40 steps, LR x0.1
    # after epochs 40/80/120 x 0.02 (steps 10/20/30): 0.1 x 32/128 x 0.001 at the last step
    assert "train step 40/40 | lr = 2.50e-05" in proc.stdout
    with open(root / "eval" / "report.json") as fh:
        report = json.load(fh)
    return data, root / "eval", report


def _helper(data):
    from absl import flags

    from examples.pocketflow_fmnist.convnet_at_fmnist import ModelHelper
    from nets.abstract_model_helper import HelperConfig
    from nets.pocketflow_helper import framework_helper

    helper = framework_helper(ModelHelper)(HelperConfig(
        data_dir_local=str(data), batch_size=32, batch_size_eval=100, nb_epochs_rat=0.02))
    flags.FLAGS.nb_smpls_train, flags.FLAGS.nb_smpls_val = N_TRAIN, N_VAL
    return helper


def _compress(trained, tmp_path, learner, **options):
    import pocketflow_torch as pf

    data, full, _ = trained
    shutil.copytree(full, tmp_path / "eval")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pf.compress(_helper(data), learner=learner, out_dir=str(tmp_path),
                           full_model=str(tmp_path / "eval" / "model.ckpt"),
                           report_latency=False, **options)
    finally:
        torch.set_num_threads(threads)


def test_full_precision_by_pocketflows_command(trained):
    _, _, report = trained
    assert (report["model"], report["dataset"], report["learner"]) == ("convnet", "fmnist", "full-prec")
    assert report["accuracy"]["full"] >= 0.7                 # 0.855 here
    assert report["params"]["full"] == 3_274_634             # PocketFlow's 4-layer ConvNet
    assert report["onnx"]["max_abs_diff"] <= 1e-4


CHANNEL = {"chn-pruned-rmt": dict(cpr_nb_smpls=128),
           "channel": dict(cp_prune_option="auto", cp_nb_rlouts=3, cp_nb_rlouts_min=2,
                           cp_nb_batches=2, ddpg_batch_size=8),
           "chn-pruned-gpu": dict(cpg_nb_smpls=128, cpg_nb_iters_pgd=50, cpg_nb_iters_layer=50),
           "dis-chn-pruned": dict(dcp_nb_iters_block=2, dcp_nb_iters_layer=1)}
QUANT = {"uniform": dict(uql_enbl_rl_agent=True, uql_nb_rlouts=2, uql_nb_rlouts_min=1,
                         uql_tune_global_steps=2),
         "non-uniform": dict(nuql_weight_bits=3), "uniform-tf": {}}
FAST = {"chn-pruned-rmt", "uniform"}


def _marked(names):
    return [name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in names]


@pytest.mark.parametrize("learner", _marked(CHANNEL))
def test_channel_learners_thin_the_port(trained, tmp_path, learner):
    # 'same' padding (tf.layers' in the port), a flatten into fc3: selection, thinning, export
    result = _compress(trained, tmp_path, learner, **CHANNEL[learner])
    report = result.report
    assert report["flops"]["compressed"] <= 0.6 * report["flops"]["full"]
    assert report["accuracy"]["compressed"] >= 0.6           # 0.89-1.0 here
    assert report["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, report["onnx"]["max_abs_output"])
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels < 32 or convs[1].out_channels < 64     # physically thinner


@pytest.mark.parametrize("learner", _marked(QUANT))
def test_quantization_learners_on_the_port(trained, tmp_path, learner):
    report = _compress(trained, tmp_path, learner, **QUANT[learner]).report
    assert report["accuracy"]["compressed"] >= 0.6           # 0.92-0.995 here
    assert report["bytes_on_disk"]["compressed"] <= 0.3 * report["bytes_on_disk"]["full"]


@pytest.mark.slow
def test_weight_sparse_and_schedule_on_the_port(trained, tmp_path):
    report = _compress(trained, tmp_path / "ws", "weight-sparse", ws_prune_ratio_prtl="optimal",
                       ws_nb_rlouts=2, ws_nb_rlouts_min=1, ws_nb_iters_ft=2).report
    assert report["accuracy"]["compressed"] >= 0.6
    assert report["bytes_on_disk"]["compressed"] < report["bytes_on_disk"]["full"]
    policy = tmp_path / "agp.yaml"
    policy.write_text("version: 1\npruners:\n  p:\n    class: AutomatedGradualPruner\n"
                      "    initial_sparsity: 0.05\n    final_sparsity: 0.5\n"
                      "    weights: [conv2.weight, fc3.weight]\n"
                      "policies:\n  - pruner: {instance_name: p}\n    starting_epoch: 0\n"
                      "    ending_epoch: 1\n    frequency: 1\n")
    result = _compress(trained, tmp_path / "sch", "schedule", compress=str(policy))
    sparsity = (result.model.fc3.weight == 0).float().mean().item()
    assert sparsity == pytest.approx(0.5, abs=0.01)


def test_gate_decorator_says_why_a_net_without_batchnorm_has_no_gates(trained, tmp_path):
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="no channel of this model can be gated: it needs a "
                                          "BatchNorm2d"):
        _compress(trained, tmp_path, "gate-decorator")


def test_dump_n_eval_sees_every_evaluation_batch(trained):
    import pocketflow_torch as pf
    from examples.pocketflow_fmnist.convnet_at_fmnist import ModelHelper

    class Dumping(ModelHelper):
        def dump_n_eval(self, outputs, action):
            self.actions = getattr(self, "actions", []) + [
                action if outputs is None else (action, outputs.shape[0])]

    data, full, report = trained
    helper = _helper(data)
    from nets.pocketflow_helper import framework_helper

    dumping = framework_helper(Dumping)(helper.cfg)
    result = pf.evaluate(str(full / "model.ckpt"), dumping)
    assert result["accuracy"] == pytest.approx(report["accuracy"]["full"])
    assert dumping.port.actions == ["init", ("dump", 100), ("dump", 100), "eval"]
