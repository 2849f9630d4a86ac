"""Multi-process training through scripts/run_local.sh: torchrun and horovodrun (gloo, CPU)."""
from __future__ import annotations

import glob
import json
import os
import re
import socket
import time

import pytest

from tests.conftest import BACKENDS, REPO, digits_run, run_local


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank0_decision_reaches_every_rank(backend, tmp_path):
    proc = run_local("tests/workers/mgw_worker.py", "-n=2", "broadcast", f"--mgw_backend={backend}",
                     timeout=120, env={"PF_RESULT_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.load(open(tmp_path / name)) for name in sorted(os.listdir(tmp_path))]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["size"] == 2 and r["backend"] == backend for r in ranks)
    assert ranks[0]["drawn"] != ranks[1]["drawn"]             # they really started different
    for r in ranks:
        assert r["received"] == ranks[0]["drawn"]
        assert r["tensor"] == pytest.approx(ranks[0]["drawn"])
        assert r["sum"] == 3.0                                # allreduce of rank+1 over 2 ranks


@pytest.mark.parametrize("how", ["die-raise", "die-kill"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dying_rank_stops_the_job(backend, how):
    start = time.monotonic()
    proc = run_local("tests/workers/mgw_worker.py", "-n=2", how, f"--mgw_backend={backend}", timeout=90)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert elapsed < 60, f"took {elapsed:.0f} s"
    # torchrun: "rank : 1 (local_rank: 1)"; horovodrun: "Process 1 exit with status code ..."
    assert re.search(r"(rank|process)\D{0,12}1\b", output, re.IGNORECASE), output[-3000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_run_on_two_processes_says_it_once_and_exits_2(tmp_path, backend):
    proc = run_local("nets/resnet_at_digits_run.py", "-n=2", f"--mgw_backend={backend}",
                     "--lrn_rate_init=-1", "--log_dir=", f"--save_path={tmp_path}/m/model.ckpt",
                     f"--save_path_eval={tmp_path}/e/model.ckpt", timeout=120)
    output = proc.stdout + proc.stderr
    said = output.count("error: --lrn_rate_init: must be positive, got -1.0")
    if backend == "torch":            # learners.torchrun: once, the processes' status, no traceback
        assert said == 1 and proc.returncode == 2, output[-3000:]
        assert "Traceback" not in output and "ChildFailedError" not in output
    else:                             # horovodrun shows every rank's output, and its own status
        assert said >= 1 and proc.returncode != 0, output[-3000:]


def test_zero_processes_is_refused():
    proc = run_local("nets/resnet_at_digits_run.py", "-n=0", timeout=30)
    assert proc.returncode == 2
    assert "-n must be a positive integer" in proc.stderr


def test_horovod_backend_without_horovod_is_refused(tmp_path):
    fake = tmp_path / "horovod"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no horovod here')\n")
    proc = run_local("tests/workers/mgw_worker.py", "-n=2", "broadcast", "--mgw_backend=horovod",
                     env={"PYTHONPATH": f"{tmp_path}:{REPO}"}, timeout=30)
    assert proc.returncode == 2
    assert "Horovod is not installed" in proc.stderr
    assert "--mgw_backend=torch" in proc.stderr


def test_port_in_use_is_refused():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_local("tests/workers/mgw_worker.py", "-n=2", "broadcast", "--mgw_backend=torch",
                         env={"MASTER_PORT": str(port)}, timeout=30)
    assert proc.returncode == 2
    assert f"port {port}" in proc.stderr and "already in use" in proc.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_process_training_only_rank0_writes(tmp_path, backend):
    proc, report = digits_run(tmp_path, 2, backend, "--nb_epochs_rat=0.1", "--batch_size=32",
                              "--save_step=20", "--summ_step=10")
    assert "parameters identical on all 2 ranks" in proc.stdout
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["model.ckpt"]
    assert len(glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents*"), recursive=True)) == 1
    assert report["accuracy"]["full"] > 0.3
    # only rank 0 prints the training log
    assert len(re.findall(r"train step 20/", proc.stdout)) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_sparse_search_on_rank0_two_processes(tmp_path, backend):
    """The DDPG search runs on rank 0 alone; both ranks fine-tune with the same exact masks."""
    proc = run_local("nets/resnet_at_digits_run.py", "-n=2", f"--mgw_backend={backend}",
                     "--learner=weight-sparse", f"--save_path={tmp_path}/ckpt/model.ckpt",
                     f"--save_path_eval={tmp_path}/eval/model.ckpt", "--log_dir=",
                     "--report_latency=false", "--nb_epochs_rat=0.05", "--batch_size=32",
                     "--image_size=8", "--summ_step=10", "--ws_prune_ratio=0.8",
                     "--ws_prune_ratio_prtl=optimal", "--ws_nb_rlouts=2", "--ws_nb_rlouts_min=1",
                     "--ws_nb_iters_ft=2", "--ws_nb_iters_rg=2", "--ws_nb_iters_feval=1",
                     f"--ws_save_path={tmp_path}/ws/model.ckpt",
                     f"--ws_save_path_eval={tmp_path}/ws_eval/model.ckpt", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "finetune: parameters identical on all 2 ranks" in proc.stdout
    assert len(re.findall(r"roll-out 2/2", proc.stdout)) == 1          # searched once
    with open(tmp_path / "ws_eval" / "report.json") as handle:
        report = json.load(handle)
    assert report["sparsity"]["zeros"] == round(0.8 * report["sparsity"]["numel"])


@pytest.mark.parametrize("learner,extra", [
    ("uniform", ["--uql_enbl_rl_agent", "--uql_equivalent_bits=3", "--uql_nb_rlouts=2",
                 "--uql_nb_rlouts_min=1", "--uql_tune_global_steps=2", "--uql_nb_iters_feval=1"]),
    ("non-uniform", ["--nuql_weight_bits=3"]),
])
def test_quantization_learners_on_two_processes(tmp_path, learner, extra):
    prefix = "uql" if learner == "uniform" else "nuql"
    proc = run_local("nets/resnet_at_digits_run.py", "-n=2", "--mgw_backend=torch",
                     f"--learner={learner}", f"--save_path={tmp_path}/ckpt/model.ckpt",
                     f"--save_path_eval={tmp_path}/eval/model.ckpt", "--log_dir=",
                     "--report_latency=false", "--nb_epochs_rat=0.05", "--batch_size=32",
                     "--image_size=8", "--summ_step=10", f"--{prefix}_save_path={tmp_path}/q/m.ckpt",
                     f"--{prefix}_save_path_eval={tmp_path}/q_eval/m.ckpt", *extra, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "finetune: parameters identical on all 2 ranks" in proc.stdout
    with open(tmp_path / "q_eval" / "report.json") as handle:
        report = json.load(handle)
    assert report["quantization"]["file"]["round_trip_exact"] is True
    bits = report["quantization"]["bits"]
    assert len(bits) == 20 and all(2 <= b <= 8 for b in bits.values())


@pytest.mark.parametrize("learner,extra", [
    ("channel", ["--cp_prune_option=auto", "--cp_nb_rlouts=2", "--cp_nb_rlouts_min=1",
                 "--cp_rerank_ft_steps=2",
                 "--cp_rl_nb_batches=1", "--cp_nb_iters_feval=1", "--cp_nb_batches=2"]),
    ("chn-pruned-rmt", ["--cpr_prune_ratio_prtl=optimal", "--cpr_preserve_ratio=0.5",
                        "--cpr_nb_rlouts=2", "--cpr_nb_rlouts_min=1", "--cpr_rl_nb_batches=1",
                        "--cpr_rerank_ft_steps=2",
                        "--cpr_nb_iters_feval=1", "--cpr_nb_smpls=64"]),
    pytest.param("chn-pruned-rmt", ["--cpr_budget_type=latency", "--cpr_preserve_ratio=0.97",
                                    "--cpr_min_preserve_ratio=0.25", "--cpr_nb_smpls=64"],
                 marks=pytest.mark.slow),   # rank 0 measures, every rank gets its counts
    # the same primary-only selection + broadcast path as channel's: -m slow
    pytest.param("chn-pruned-gpu", ["--cpg_nb_smpls=64", "--cpg_nb_iters_pgd=20",
                                    "--cpg_nb_iters_layer=20"], marks=pytest.mark.slow),
    pytest.param("dis-chn-pruned", ["--dcp_nb_iters_block=2", "--dcp_nb_iters_layer=1",
                                    "--dcp_nb_batches=2"], marks=pytest.mark.slow),
])
def test_channel_learners_on_two_processes(tmp_path, learner, extra):
    """Counts (and any search) decided once on rank 0; both ranks fine-tune the same thinned
    model."""
    proc = run_local("nets/resnet_at_digits_run.py", "-n=2", "--mgw_backend=torch",
                     f"--learner={learner}", f"--save_path={tmp_path}/ckpt/model.ckpt",
                     f"--save_path_eval={tmp_path}/eval/model.ckpt", "--log_dir=",
                     "--report_latency=false", "--nb_epochs_rat=0.05", "--batch_size=32",
                     "--image_size=8", "--summ_step=10",
                     f"--{PREFIXES[learner]}_save_path={tmp_path}/c/m.ckpt",
                     f"--{PREFIXES[learner]}_save_path_eval={tmp_path}/c_eval/m.ckpt",
                     f"--{PREFIXES[learner]}_save_path_ws={tmp_path}/c_ws/m.ckpt", *extra,
                     timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "finetune: parameters identical on all 2 ranks" in proc.stdout
    assert len(re.findall(r"roll-out 2/2", proc.stdout)) <= 1          # searched once at most
    with open(tmp_path / "c_eval" / "report.json") as handle:
        report = json.load(handle)
    if "--cpr_budget_type=latency" in extra:      # measured on rank 0 only, counts broadcast
        assert len(report["strategy"]["latency"]["trials"]) >= 1
        assert report["flops"]["compressed"] < report["flops"]["full"]
    else:
        assert report["flops"]["compressed"] < 0.6 * report["flops"]["full"]
    assert report["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, report["onnx"]["max_abs_output"])


PREFIXES = {"channel": "cp", "chn-pruned-gpu": "cpg", "dis-chn-pruned": "dcp",
            "chn-pruned-rmt": "cpr"}


def test_chain_on_two_processes(tmp_path):
    """non-uniform warm-started from a thinned model on 2 processes: every rank starts from the
    same artifact, fine-tunes identically, and rank 0 alone writes and checks the ONNX file."""
    from learners.launch import run
    from nets import resnet_at_digits
    from tests.conftest import flag_values

    start = flag_values(tmp_path, "--learner=chn-pruned-rmt", "--image_size=8",
                        "--nb_epochs_rat=0.05", "--cpr_nb_smpls=64", "--export_format=none",
                        f"--cpr_save_path={tmp_path}/cpr/m.ckpt",
                        f"--cpr_save_path_eval={tmp_path}/cpr_eval/m.ckpt",
                        f"--cpr_save_path_ws={tmp_path}/cpr_ws/m.ckpt")
    thinned = run(resnet_at_digits.ModelHelper, start)
    proc = run_local("nets/resnet_at_digits_run.py", "-n=2", "--mgw_backend=torch",
                     "--learner=non-uniform", "--enbl_warm_start",
                     f"--warm_start_path={tmp_path}/cpr_eval/m.ckpt", "--nuql_weight_bits=4",
                     f"--save_path={tmp_path}/ckpt/model.ckpt",
                     f"--save_path_eval={tmp_path}/eval/model.ckpt", "--log_dir=",
                     "--report_latency=false", "--nb_epochs_rat=0.05", "--batch_size=32",
                     "--image_size=8", "--export_format=onnx", f"--nuql_save_path={tmp_path}/q/m.ckpt",
                     f"--nuql_save_path_eval={tmp_path}/q_eval/m.ckpt", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "finetune: parameters identical on all 2 ranks" in proc.stdout
    assert len(re.findall(r"onnx fp32 .*q_eval/m\.onnx", proc.stdout)) == 1  # rank 0 only
    with open(tmp_path / "q_eval" / "report.json") as handle:
        report = json.load(handle)
    assert [s["learner"] for s in report["chain"]] == ["full-prec", "chn-pruned-rmt", "non-uniform"]
    assert report["params"]["compressed"] == thinned["params"]["compressed"]
    assert report["deploy"]["onnx_fp32"]["parity_ok"]


def test_gate_decorator_on_two_processes(tmp_path):
    """Ticks on rank 0 (gates broadcast), tocks and fine-tuning on both ranks."""
    proc = run_local("nets/resnet_at_digits_run.py", "-n=2", "--mgw_backend=torch",
                     "--learner=gate-decorator", f"--save_path={tmp_path}/ckpt/model.ckpt",
                     f"--save_path_eval={tmp_path}/eval/model.ckpt", "--log_dir=",
                     "--report_latency=false", "--nb_epochs_rat=0.05", "--batch_size=32",
                     "--image_size=8", "--summ_step=10", "--gd_tick_nb_batches=2", "--gd_t=3",
                     "--gd_p=0.05", "--gd_tock_epoch=0.1", f"--gd_save_path={tmp_path}/g/m.ckpt",
                     f"--gd_save_path_eval={tmp_path}/g_eval/m.ckpt", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "tock0: parameters identical on all 2 ranks" in proc.stdout
    assert "finetune: parameters identical on all 2 ranks" in proc.stdout
    with open(tmp_path / "g_eval" / "report.json") as handle:
        report = json.load(handle)
    assert 0.45 <= report["flops"]["compressed"] / report["flops"]["full"] <= 0.5
    assert report["onnx"]["max_abs_diff"] <= 1e-4 * max(1.0, report["onnx"]["max_abs_output"])
