"""--channels_last, --amp_dtype and --compile: the same training, run differently (docs/speed.md)."""
from __future__ import annotations

import copy
import functools
import logging
import os

import pytest
import torch
import torch.nn.functional as F
from absl import flags
from torch import nn

import training.trainer
from learners.config import LearnerConfig
from learners.launch import run
from nets import resnet_at_digits
from nets.registry import create_net
from tests.conftest import (compress_digits, digits_flag_values, needs_horovod, run_local, tiny_digits_argv)
from training.distillation import DistillationCallback
from training.trainer import Callback, Trainer
from utils.checkpoint import load_file
from utils.config import ConfigError, from_flag_dict, settings


@pytest.fixture
def runs(one_thread, tmp_path):
    """``runs(name, *flags)``: a tiny digits full-prec run (7 steps, 8x8, unless the flags
    say otherwise) under tmp_path/name;
    returns (report, artifact state_dict, training checkpoint path). The 'pocketflow' logger is
    restored afterwards."""
    logger = logging.getLogger("pocketflow")
    saved = (logger.handlers[:], logger.level, logger.propagate)

    def go(name: str, *extra: str):
        root = tmp_path / name
        values = digits_flag_values(*tiny_digits_argv(root), "--export_format=none", *extra)
        report = run(resnet_at_digits.ModelHelper, values)
        weights = load_file(values["save_path_eval"], kind="model")["state_dict"]
        return report, weights, values["save_path"]

    yield go
    logger.handlers[:], logger.level, logger.propagate = saved


def assert_close_weights(ref: dict, other: dict, rtol: float, atol: float) -> None:
    assert list(ref) == list(other)             # the same keys in the same order
    for key, value in ref.items():
        assert other[key].dtype == value.dtype, key
        if value.is_floating_point():
            torch.testing.assert_close(other[key], value, rtol=rtol, atol=atol,
                                       msg=lambda text, key=key: f"{key}: {text}")
        else:
            assert torch.equal(other[key], value), key


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def cross_entropy(labels, outputs):
    return F.cross_entropy(outputs, labels), {}


def train(model: nn.Module, steps: int = 3, callbacks=(), **options) -> nn.Module:
    """``steps`` SGD steps of ``model`` on fixed random 8x8 batches (seeded)."""
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen))
               for _ in range(steps)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    Trainer(model, optimizer, cross_entropy, batches, steps, torch.device("cpu"),
            callbacks=list(callbacks), **options).fit()
    return model


# -- options ---------------------------------------------------------------------------------
def test_bad_amp_dtype_is_refused_listing_the_valid_values():
    with pytest.raises(flags.IllegalFlagValueError,
                       match=r"--amp_dtype=float16: value should be one of <none\|bfloat16>"):
        digits_flag_values("--amp_dtype=float16")
    with pytest.raises(ConfigError, match=r"^--amp_dtype: must be one of none, bfloat16, "
                                          r"got 'float16'$"):
        from_flag_dict(LearnerConfig, {"amp_dtype": "float16"})


def test_flags_do_not_enter_the_resume_settings():
    """They change how the step runs, not what it trains (like --device): a run may resume
    with other values."""
    fast = LearnerConfig(channels_last=True, amp_dtype="bfloat16", compile=True)
    assert settings((fast, "")) == settings((LearnerConfig(), ""))
    values = digits_flag_values("--channels_last", "--amp_dtype=bfloat16", "--compile")
    assert (values["channels_last"], values["amp_dtype"], values["compile"]) == (True, "bfloat16", True)


# -- channels_last ---------------------------------------------------------------------------
def test_channels_last_trains_the_plain_weights_and_saves_the_usual_layout(runs):
    _, plain, _ = runs("plain")
    report, fast, ckpt = runs("channels_last", "--channels_last", "--export_format=onnx")
    assert_close_weights(plain, fast, rtol=1e-4, atol=1e-5)   # 7 steps: measured ~4e-7
    assert all(t.is_contiguous() for t in fast.values())      # the artifact: standard layout
    assert any(path.endswith(".onnx") for path in report["files"])  # exported and checked
    # the training checkpoint (written while the model was channels_last) loads weights-only
    state = torch.load(ckpt, weights_only=True)["model"]
    assert_close_weights(fast, state, rtol=0, atol=0)
    model = create_net("resnet20", num_classes=10, in_channels=1)
    model.load_state_dict(state)


def test_channels_last_model_is_contiguous_again_after_fit():
    model = tiny_net()
    train(model, channels_last=True)
    assert model[3].weight.stride() == (8, 1, 1, 1)          # 1x1 kernel: canonical strides too
    assert all(t.is_contiguous() for t in model.state_dict().values())


def test_resume_of_a_fast_run_matches_the_uninterrupted_one(runs, monkeypatch, tmp_path):
    """A channels_last + bf16 run cut at step 5 (checkpoint at step 3) and resumed with the same
    flags ends bit-identical; a run without them may resume the same checkpoint."""
    fast = ("--channels_last", "--amp_dtype=bfloat16", "--save_step=3")
    _, whole, _ = runs("whole", *fast)

    class Cut(Exception):
        pass

    step = Trainer._train_step

    def cut_at_5(self, state):
        if self.step == 5:
            raise Cut
        step(self, state)

    monkeypatch.setattr(Trainer, "_train_step", cut_at_5)
    with pytest.raises(Cut):
        runs("cut", *fast)
    monkeypatch.setattr(Trainer, "_train_step", step)
    assert load_file(str(tmp_path / "cut" / "models" / "model.ckpt"))["step"] == 3
    _, resumed, ckpt = runs("cut", *fast, "--resume")
    assert_close_weights(whole, resumed, rtol=0, atol=0)
    report, _, _ = runs("cut", "--resume")          # flags off: accepted, not refused
    assert report["learner"] == "full-prec"


# -- amp -------------------------------------------------------------------------------------
class Seen(Callback):
    """Records the dtypes the loss callbacks see."""

    def __init__(self) -> None:
        self.dtypes = []

    def before_backward_pass(self, trainer, state) -> None:
        self.dtypes.append((state.outputs.dtype, state.loss.dtype))


def test_amp_bfloat16_autocasts_the_training_forward_only():
    torch.manual_seed(0)
    model = create_net("resnet20", num_classes=10, in_channels=1)
    teacher = DistillationCallback(copy.deepcopy(model), loss_w=4.0, temperature=4.0)
    conv_outputs = []
    model.layer1[0].conv1.register_forward_hook(
        lambda module, args, out: conv_outputs.append((module.training, out.dtype)))
    seen = Seen()
    train(model, steps=2, callbacks=[teacher, seen], amp_dtype=torch.bfloat16)
    assert conv_outputs == [(True, torch.bfloat16)] * 2       # inside conv: bfloat16
    # the loss and every callback's term (distillation) are float32, and so are the weights
    assert seen.dtypes == [(torch.float32, torch.float32)] * 2
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters())
    with torch.no_grad():                                      # evaluation: float32
        assert model.eval()(torch.randn(2, 1, 8, 8)).dtype == torch.float32
    assert conv_outputs[-1] == (False, torch.float32)


def test_amp_bfloat16_training_reaches_the_plain_accuracy(runs):
    longer = ("--nb_epochs_rat=0.1", "--batch_size=64")      # 68 steps
    plain, _, _ = runs("plain", *longer)
    amp, _, _ = runs("amp", *longer, "--amp_dtype=bfloat16")
    plain_acc, amp_acc = plain["accuracy"]["full"], amp["accuracy"]["full"]
    print(f"accuracy: plain {plain_acc:.4f}, bf16 autocast {amp_acc:.4f}")
    assert plain_acc > 0.85 and amp_acc > 0.85                 # both learned (10 classes)
    # 68 steps on 359 test images: seeds 0-4 measured differences of -0.042..+0.031 either way
    # (rounding differences grow into other trajectories); benchmarks/training_flags.py
    # measures the mean over seeds
    assert abs(amp_acc - plain_acc) <= 0.06


# -- compile ---------------------------------------------------------------------------------
@pytest.fixture
def fresh_compile(monkeypatch):
    """No compile failure remembered from an earlier test."""
    monkeypatch.setattr(training.trainer, "_compile_failure", None)


def test_compile_keeps_state_dict_keys_and_weights(fresh_compile, one_thread):
    torch.manual_seed(0)
    plain = tiny_net()
    compiled = copy.deepcopy(plain)
    train(plain)
    train(compiled, compile=True)
    assert training.trainer._compile_failure is None, training.trainer._compile_failure
    assert_close_weights(plain.state_dict(), compiled.state_dict(), rtol=1e-4, atol=1e-5)
    assert type(compiled) is nn.Sequential                     # the module itself, not a wrapper


def test_failed_compilation_falls_back_to_eager_with_one_warning(fresh_compile, monkeypatch, caplog):
    def no_compiler(graph, example_inputs):
        raise RuntimeError("no working C++ compiler (simulated)")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=no_compiler))
    torch.manual_seed(0)
    plain = tiny_net()
    first, second = copy.deepcopy(plain), copy.deepcopy(plain)
    train(plain)
    with caplog.at_level(logging.WARNING, logger="pocketflow"):
        train(first, compile=True)
        train(second, compile=True)      # the same process: no second try, no second warning
    warnings = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "no working C++ compiler (simulated)" in warnings[0] and "eager" in warnings[0]
    for model in (first, second):       # eager from the first step: exactly the plain run
        assert_close_weights(plain.state_dict(), model.state_dict(), rtol=0, atol=0)


@pytest.mark.slow
def test_compile_run_checkpoints_and_distills(runs, fresh_compile, tiny_pretrained, tmp_path):
    """Through the runner: the compiled run saves the plain run's keys (artifact and resumable
    checkpoint) with close weights, and a learner fine-tuning with distillation compiles too."""
    _, plain, plain_ckpt = runs("plain")
    _, compiled, ckpt = runs("compile", "--compile")
    assert training.trainer._compile_failure is None, training.trainer._compile_failure
    # the first step agrees to ~1e-7 (as channels_last's); 7 steps at this LR amplify rounding
    # differences to ~4e-4 (measured)
    assert_close_weights(plain, compiled, rtol=1e-2, atol=2e-3)
    assert list(load_file(ckpt)["model"]) == list(load_file(plain_ckpt)["model"])
    report, _, _ = runs("compile", "--resume")           # its checkpoint resumes without --compile
    assert report["learner"] == "full-prec"
    result = compress_digits(tmp_path, tiny_pretrained, "weight-sparse", compile=True,
                             enbl_dst=True, export_format="none")
    assert training.trainer._compile_failure is None, training.trainer._compile_failure
    assert not any("_orig_mod" in key for key in result.model.state_dict())
    assert result.report["accuracy"]["compressed"] > 0.3


@needs_horovod
@pytest.mark.horovod
def test_channels_last_with_horovod_is_refused_before_anything_is_written(tmp_path):
    proc = run_local("nets/resnet_at_digits_run.py", "-n=2", "--mgw_backend=horovod",
                     f"--save_path={tmp_path}/ckpt/model.ckpt",
                     f"--save_path_eval={tmp_path}/eval/model.ckpt", "--log_dir=",
                     "--channels_last", timeout=120)
    assert proc.returncode != 0
    assert ("error: --channels_last: the horovod backend needs contiguous gradients (its "
            "allreduce refuses channels_last ones); launch with --mgw_backend=torch, or run "
            "without --channels_last") in proc.stdout + proc.stderr
    assert not os.listdir(tmp_path)
