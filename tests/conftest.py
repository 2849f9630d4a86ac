"""Shared fixtures and helpers of the test suite. Test modules import the plain functions and
constants from here (``from tests.conftest import flag_values``), never from another test
module; helper nets live in ``tests/zoo/``, subprocess programs in ``tests/workers/``.

Sections: paths; digits runs (flag values, the shared tiny pre-trained model, the Python API);
entry scripts and tools as subprocesses; multi-process launches (scripts/run_local.sh); data in
native formats; nets and latency stand-ins shared by several modules; the net registry.
"""
from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from utils.multi_gpu_wrapper import horovod_available

# -- paths -------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]

# In-process runs keep the thread count a test sets (or torch's): results that do not depend on
# what else the machine runs (utils.cpu_share, tested on its own in tests/utils/test_cpu_share.py)
os.environ["PF_CPU_SHARE"] = "0"
# ... and every structural pass without timing it (compression.surgery.passes: tested on its own
# in tests/compression/surgery/test_passes.py): architectures that do not depend on timings
os.environ["PF_PASS_TIMING"] = "0"


# -- digits runs: flag values ------------------------------------------------------------------
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


def flag_values(tmp_path, *args: str, helper=None) -> dict:
    """The flag dict of a digits run (``helper``: the digits ResNet's by default) with its
    checkpoints under ``tmp_path/ckpt`` and ``tmp_path/eval``, no TensorBoard log, no latency
    report; ``args`` add or override flags."""
    from absl import flags

    from learners.launch import define_flags
    from nets import resnet_at_digits

    fv = flags.FlagValues()
    define_flags(fv, helper or resnet_at_digits.ModelHelper)
    fv(["prog", f"--save_path={tmp_path}/ckpt/model.ckpt",
        f"--save_path_eval={tmp_path}/eval/model.ckpt", "--log_dir=", "--report_latency=false",
        *args])
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


# -- digits runs: the shared tiny pre-trained model and the Python API -------------------------
@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory):
    """One tiny full-precision digits ResNet-20 (8x8 inputs) shared by the compression tests;
    ``use_pretrained(tmp_path)`` copies it to ``tmp_path/eval`` (the runs' ``--save_path_eval``)."""
    import shutil

    from learners.launch import run
    from nets import resnet_at_digits

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


# -- entry scripts and tools as subprocesses ---------------------------------------------------
def start_entry(script: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Start ``python nets/<script> args`` (cwd: where relative default paths land)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")])),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # tiny nets; runs overlap
    return subprocess.Popen([sys.executable, str(REPO / "nets" / script), *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tool(name: str, *args: str) -> subprocess.Popen:
    """Start ``python -m tools.<name> args`` from the repository root (CPU, one thread)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", f"tools.{name}", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for ``proc``; its return code, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- multi-process launches through scripts/run_local.sh (torchrun / horovodrun, gloo) ----------
# CI builds Horovod and sets PF_REQUIRE_HOROVOD=1, so there its tests fail instead of skipping
needs_horovod = pytest.mark.skipif(
    not horovod_available() and not os.environ.get("PF_REQUIRE_HOROVOD"),
    reason="Horovod not installed (scripts/install_horovod.sh)")
BACKENDS = ["torch", pytest.param("horovod", marks=[needs_horovod, pytest.mark.horovod])]


def run_local(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``bash scripts/run_local.sh args`` from the repository root, to completion."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(REPO / "scripts" / "run_local.sh"), *args],
                          cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def digits_run(tmp_path, nprocs: int, backend: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """A full-prec digits run on ``nprocs`` processes with outputs under ``tmp_path``; the
    finished process and its report (the run must succeed)."""
    import json

    proc = run_local("nets/resnet_at_digits_run.py", f"-n={nprocs}", f"--mgw_backend={backend}",
                     f"--save_path={tmp_path}/ckpt/model.ckpt",
                     f"--save_path_eval={tmp_path}/eval/model.ckpt", f"--log_dir={tmp_path}/tb",
                     "--report_latency=false", *extra, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with open(tmp_path / "eval" / "report.json") as handle:
        return proc, json.load(handle)


# -- data written in native formats --------------------------------------------------------------
def synthetic_fmnist(n: int, seed: int):
    """``n`` Fashion-MNIST-shaped uint8 images (28x28) and labels. Class k: 1-pixel stripes,
    horizontal with period k+2 (k < 5) or vertical with period k-3 (k >= 5), at a random
    phase, over uniform noise.

    Not a class-dependent *position* (say a bar at row 2k+4): the training augmentation shifts
    images by up to 2 pixels and the net ends in a global average pool, so position is neither
    preserved nor easy to see. Stripe direction and period survive shifts and flips.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, (n, 28, 28))
    grid = np.arange(28)
    for img, k in zip(images, labels):
        period = k + 2 if k < 5 else k - 3
        on = (grid + rng.integers(period)) % period == 0
        if k < 5:
            img[on, :] = rng.integers(200, 256, (on.sum(), 28))
        else:
            img[:, on] = rng.integers(200, 256, (28, on.sum()))
    return images.astype(np.uint8), labels.astype(np.uint8)


# -- nets and stand-ins shared by several modules ----------------------------------------------
# Smallest convenient square input side of each registered net (3 input channels).
# Every built-in family once: Distiller's CIFAR nets by one member each (all depths and
# variants: tests/nets/test_distiller_cifar.py); tests over "every net" iterate these.
INPUT_SIZES = {"resnet20": 32, "resnet32": 32, "resnet44": 32, "resnet56": 32, "lenet": 32,
               "resnet18": 64, "resnet34": 64, "resnet50": 64, "mobilenet_v1": 64,
               "mobilenet_v2": 64, "resnet20_cifar": 32, "preact_resnet20_cifar": 32,
               "preact_resnet20_cifar_conv_ds": 32, "vgg11_bn_cifar": 32, "simplenet_cifar": 32}


def distiller_resnet20():
    """The ResNet-20 of the Distiller schedule tests: 1 input channel, 10 classes, non-trivial
    BN statistics and affine parameters (seeded), in eval mode."""
    import torch

    from nets.registry import build_from_spec, net_spec

    model = build_from_spec(net_spec("resnet20", num_classes=10, in_channels=1))
    torch.manual_seed(0)
    for module in model.modules():   # non-trivial BN statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def rebuilt_output(spec: dict, base, model, x):
    """The output on ``x`` of ``model`` rebuilt from ``spec`` over ``base`` (an unthinned
    instance of its net) with ``model``'s weights: what a saved artifact computes."""
    import torch
    from compression.artifacts import build_model

    rebuilt = build_model(spec, base=base)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        return rebuilt.eval()(x)


def half_fixed_ratio(full, candidate, shape, *args, **kwargs) -> float:
    """A deterministic stand-in for ``measured_ratio``: half the latency fixed, half
    proportional to the FLOPs of what is timed."""
    from utils.model_stats import count_flops

    return 0.5 + 0.5 * count_flops(candidate, shape) / count_flops(full, shape)


def flops_timing(monkeypatch, per_module_ms: float = 0.01) -> None:
    """Deterministic 'timings' for the table: 1 ms per MFLOP plus a fixed cost per module (the
    real ones are noise on a loaded machine; the table's arithmetic is what is tested here)."""
    import torch

    from compression.budget import latency as channel_latency
    from utils.model_stats import count_flops

    def time_forward(module, shape, batch_sizes=(1,), **_):
        return {f"bs{b}": 1e-6 * count_flops(module, shape) + per_module_ms for b in batch_sizes}

    def measure_latency(model, shape, batch_sizes=(1,), **_):
        convs = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
        return {f"bs{b}": 1e-6 * count_flops(model, shape) + per_module_ms * convs
                for b in batch_sizes}

    monkeypatch.setattr(channel_latency, "time_forward", time_forward)
    monkeypatch.setattr(channel_latency, "measure_latency", measure_latency)


# -- the net registry --------------------------------------------------------------------------
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


# -- hostile inputs: a loader in a child process, its time and its own peak memory -------------
_CHILD_PROBE = """
import json, sys, time
from {module} import {function} as load
from utils.checkpoint import CheckpointError
from utils.config import ConfigError
start = time.time()                                   # the loading, not the imports
try:
    load(sys.argv[1])
    outcome = "loaded"
except (CheckpointError, ConfigError) as exc:
    outcome = str(exc)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"outcome": outcome, "seconds": time.time() - start,
                  "peak_mb": int(hwm.split()[1]) / 1024}}))
"""


def load_in_child(loader: str, path) -> dict:
    """``{"outcome": "loaded" or the refusal's message, "seconds", "peak_mb"}`` of
    ``loader(path)`` (``"module:function"``) in a fresh process (VmHWM: its own peak)."""
    import json

    module, function = loader.split(":")
    proc = subprocess.run([sys.executable, "-c", _CHILD_PROBE.format(module=module, function=function),
                           str(path)], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])
