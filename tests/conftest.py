"""Shared fixtures: flag values for a very short digits run, and entry-script subprocesses."""
from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tiny_digits_argv(root: Path) -> list[str]:
    """Flags of a 7-step resnet20 digits run (8x8 inputs) whose outputs all lie under ``root``."""
    return ["--nb_epochs_rat=0.005", "--batch_size=32", "--resnet_size=20", "--image_size=8",
            "--log_dir=", "--report_latency=False", "--summ_step=5", "--save_step=10",
            f"--save_path={root / 'models' / 'model.ckpt'}",
            f"--save_path_eval={root / 'models_eval' / 'model.ckpt'}"]


def digits_flag_values(*argv: str) -> dict:
    """The full flag dict of ``nets/resnet_at_digits_run.py`` parsed from ``argv`` (no sys.argv)."""
    from absl import flags

    from learners.launch import define_flags
    from nets.resnet_at_digits import ModelHelper

    fv = flags.FlagValues()
    define_flags(fv, ModelHelper)
    fv(["prog", *argv])
    return fv.flag_values_dict()


@pytest.fixture
def one_thread():
    """One intra-op thread inside a test, the previous count restored after (tests that compare
    runs across processes need every in-process run at the default)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_digits_values(tmp_path):
    """Flag values for a very short digits run in tmp_path, run with one intra-op thread (as
    the entry-script subprocesses are); restores the thread count and the 'pocketflow' logger."""
    import torch

    logger = logging.getLogger("pocketflow")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield digits_flag_values(*tiny_digits_argv(tmp_path))
    torch.set_num_threads(threads)
    logger.handlers[:], logger.level, logger.propagate = saved


def start_entry(script: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Start ``python nets/<script> args`` (cwd: where relative default paths land)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")])),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # tiny nets; runs overlap
    return subprocess.Popen([sys.executable, str(REPO / "nets" / script), *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for ``proc``; its return code, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)



@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory):
    """One tiny full-precision digits ResNet-20 (8x8 inputs) shared by the compression tests;
    ``use_pretrained(tmp_path)`` copies it to ``tmp_path/eval`` (the runs' ``--save_path_eval``)."""
    import shutil

    from learners.launch import run
    from nets import resnet_at_digits
    from tests.test_learners import flag_values

    root = tmp_path_factory.mktemp("pretrained")
    run(resnet_at_digits.ModelHelper, flag_values(root, "--nb_epochs_rat=0.05", "--image_size=8"))

    def use_pretrained(tmp_path: Path) -> None:
        shutil.copytree(root / "eval", tmp_path / "eval", dirs_exist_ok=True)

    return use_pretrained


def digits_helper(**options):
    """The digits ResNet-20 helper at 8x8 with a very short schedule (``options`` override)."""
    from nets import resnet_at_digits

    return resnet_at_digits.ModelHelper(resnet_at_digits.Config(
        **{"image_size": 8, "nb_epochs_rat": 0.05, "batch_size": 64, **options}))


def compress_digits(tmp_path: Path, use_pretrained, learner: str, helper=None, **options):
    """``pocketflow_torch.compress`` of the tiny pre-trained digits model (copied to
    ``tmp_path/eval``) with ``learner``; outputs under ``tmp_path/<learner>``."""
    import pocketflow_torch as pf

    use_pretrained(tmp_path)
    return pf.compress(helper or digits_helper(), learner=learner, out_dir=str(tmp_path),
                       full_model=str(tmp_path / "eval" / "model.ckpt"),
                       **{"report_latency": False, **options})


@contextmanager
def imported_for_module(module: str):
    """``module`` imported afresh (its nets registered) and the net registry restored to the
    built-in nets afterwards (other tests list them)."""
    from nets import registry

    registry.list_nets()
    saved = dict(registry._NETS)
    registering = ("tests.zoo.user_nets", "tests.zoo.helpers")
    for name in registering:
        sys.modules.pop(name, None)
    try:
        yield importlib.import_module(module)
    finally:
        for name in registering:
            sys.modules.pop(name, None)
        registry._NETS.clear()
        registry._NETS.update(saved)
