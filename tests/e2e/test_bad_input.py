"""Bad input end to end: unknown names, missing data and models, diverging runs."""
from __future__ import annotations

import json
import re

import pytest

from datasets.errors import DataError
from learners.launch import run
from learners.registry import learner_class
from nets import resnet_at_cifar10
from nets.registry import build_from_spec, create_net
from nets.resnet_at_digits import ModelHelper
from tests.conftest import finish, start_entry, tiny_digits_argv

DIGITS = "resnet_at_digits_run.py"
CIFAR = "resnet_at_cifar10_run.py"


@pytest.fixture(scope="module", autouse=True)
def entry(tmp_path_factory):
    """The independent entry-script runs, started together when the module starts, so they
    overlap the in-process tests (each is a ~2 s interpreter start)."""
    root = tmp_path_factory.mktemp("bad_input")
    (root / "empty").mkdir()
    procs = {
        "cifar_no_data": start_entry(CIFAR, f"--data_dir_local={root / 'empty'}", "--log_dir=",
                                     "--report_latency=False",
                                     f"--save_path={root / 'c' / 'm.ckpt'}",
                                     f"--save_path_eval={root / 'c' / 'e.ckpt'}", cwd=root),
        "eval_no_model": start_entry(DIGITS, "--exec_mode=eval", "--log_dir=",
                                     f"--save_path_eval={root / 'none' / 'model.ckpt'}", cwd=root),
        "nan": start_entry(DIGITS, *tiny_digits_argv(root / "nan"), "--lrn_rate_init=1e6",
                           "--summ_step=1", "--save_step=100", cwd=root),
    }
    yield root, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- unknown names -----------------------------------------------------------------------------
def test_unknown_net_lists_valid_nets():
    with pytest.raises(ValueError) as info:
        create_net("resnet19", num_classes=10)
    message = str(info.value)
    assert message.startswith("unknown net 'resnet19'; valid nets: ")
    valid = message.split("valid nets: ")[1].split(", ")
    assert {"resnet20", "resnet32", "lenet", "mobilenet_v1"} <= set(valid)
    assert valid == sorted(valid)
    with pytest.raises(ValueError, match="unknown net 'vgg16'; valid nets: .*resnet56"):
        build_from_spec({"net": "vgg16", "kwargs": {}})
    with pytest.raises(ValueError, match="not a net spec"):
        build_from_spec({"kwargs": {}})


def test_unknown_learner_in_process_lists_valid_learners():
    with pytest.raises(ValueError, match=r"unknown learner 'foo'; valid learners: .*full-prec"):
        learner_class("foo")


# -- missing data ------------------------------------------------------------------------------
def test_cifar10_missing_data_names_flag_and_files(tmp_path):
    helper = resnet_at_cifar10.ModelHelper(resnet_at_cifar10.Config(data_dir_local=str(tmp_path)))
    for build in (helper.build_dataset_train, helper.build_dataset_eval):
        with pytest.raises(DataError) as info:
            build()
        message = str(info.value)
        assert f"not found under {str(tmp_path)!r}" in message
        assert "data_batch_1.bin" in message and "test_batch" in message
        assert "Point --data_dir_local at the directory holding these files." in message


def test_cifar10_malformed_file_is_named(tmp_path):
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (tmp_path / name).write_bytes(b"\x00" * 10)
    helper = resnet_at_cifar10.ModelHelper(resnet_at_cifar10.Config(data_dir_local=str(tmp_path)))
    with pytest.raises(DataError) as info:
        helper.build_dataset_train()
    message = str(info.value)
    assert (f"CIFAR-10 file {tmp_path / 'data_batch_1.bin'} is malformed: size 10 is not a "
            "positive multiple of 3073 bytes") in message
    assert "--data_dir_local" in message


def test_cifar10_entry_script_missing_data_exits_2(entry):
    root, procs = entry
    res = finish(procs["cifar_no_data"])
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith(f"error: CIFAR-10 train files not found under "
                                 f"{str(root / 'empty')!r}")
    assert "data_batch_1.bin" in res.stderr and "--data_dir_local" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (root / "c").exists()


# -- eval mode -------------------------------------------------------------------------------
def test_eval_without_saved_model_exits_2(entry):
    root, procs = entry
    res = finish(procs["eval_no_model"])
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr == (f"error: no saved model at {root / 'none' / 'model.ckpt'}; train first "
                          "(--exec_mode=train) or point the save path at a model artifact\n")


def test_eval_reproduces_reported_accuracy(tiny_digits_values, tmp_path):
    report = run(ModelHelper, tiny_digits_values)
    artifact = tiny_digits_values["save_path_eval"]
    on_disk = json.loads((tmp_path / "models_eval" / "report.json").read_text())
    assert on_disk["accuracy"]["full"] == report["accuracy"]["full"]
    accuracy = on_disk["accuracy"]["full"]
    assert 0.0 <= accuracy <= 1.0
    # the accuracy is a fraction of the 359 test images (per-batch accuracies are float32:
    # ~1e-7 relative error each)
    assert abs(accuracy * 359 - round(accuracy * 359)) < 1e-4
    # in-process eval of the artifact gives exactly the reported number
    metrics = run(ModelHelper, {**tiny_digits_values, "exec_mode": "eval"})
    assert metrics["accuracy"] == accuracy
    # and so does the entry script (a fresh process, fresh RNG, only the artifact)
    res = finish(start_entry(DIGITS, "--exec_mode=eval", "--log_dir=", "--image_size=8",
                             f"--save_path_eval={artifact}", cwd=tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    printed = re.findall(rf"eval {re.escape(artifact)}: loss = [0-9.]+ \| accuracy = ([0-9.]+)",
                         res.stdout)
    assert printed == [f"{accuracy:.4f}"], res.stdout


# -- divergence through the entry script ----------------------------------------------------
def test_entry_script_nan_loss_exits_2(entry):
    root, procs = entry
    res = finish(procs["nan"])
    assert res.returncode == 2, res.stderr[-2000:]
    # checked every step (--summ_step=1): stopped at the very step whose loss was not finite
    match = re.fullmatch(r"error: train: the training loss became NaN or infinite at step (\d+); "
                         r"stopped at step (\d+) without saving the diverged weights; no checkpoint "
                         r"of this training was written\. Lower the learning rate \(--lrn_rate_init, "
                         r"or the learner's own\) or check the data\.\n", res.stderr)
    assert match and match[1] == match[2], res.stderr[-2000:]
    assert not (root / "nan" / "models_eval").exists()  # no artifact from a diverged run
