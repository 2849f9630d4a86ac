"""utils.checkpoint / utils.model_io on good, corrupt, hostile and mismatched files; NaN runs."""
from __future__ import annotations

import os
import random
import shlex

import numpy as np
import pytest
import torch

from learners.launch import run
from training.trainer import TrainingDivergedError
from nets.registry import create_net, net_spec
from nets.resnet_at_digits import ModelHelper
from utils.checkpoint import (VERSION, CheckpointError, WriteError, atomic_save, load_file,
                              rng_state,
                              save_file, set_rng_state)
from compression.artifacts import load_model
from compression.artifacts import load_weights_from, save_model


def resnet(depth: int, num_classes: int = 10) -> torch.nn.Module:
    return create_net(f"resnet{depth}", num_classes=num_classes, in_channels=1)


def save_resnet(path, depth: int = 20, num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(depth + num_classes)
    model = resnet(depth, num_classes)
    save_model(str(path), model, net_spec(f"resnet{depth}", num_classes=num_classes, in_channels=1))
    return model


def no_temp_files(directory) -> bool:
    return not [name for name in os.listdir(directory) if name.startswith(".tmp-")]


# -- round trips ----------------------------------------------------------------------------
def test_model_artifact_round_trip(tmp_path):
    path = tmp_path / "m.ckpt"
    model = save_resnet(path)
    loaded, obj = load_model(str(path))
    assert obj["format"] == "pocketflow-torch" and obj["kind"] == "model" and obj["version"] == VERSION
    assert obj["spec"] == {"net": "resnet20", "kwargs": {"num_classes": 10, "in_channels": 1}}
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert no_temp_files(tmp_path)


def test_load_with_wrong_kind_names_both_kinds(tmp_path):
    path = tmp_path / "train.ckpt"
    save_file(str(path), "checkpoint", {"model": {}, "step": 3})
    assert load_file(str(path), kind="checkpoint")["step"] == 3
    with pytest.raises(CheckpointError) as info:
        load_file(str(path), kind="model")
    assert str(info.value) == f"{path} holds a 'checkpoint', expected a 'model'"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match=f"no such file: {path}"):
        load_file(str(path))
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(str(path))


# -- corrupt and foreign files ----------------------------------------------------------------
def test_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.ckpt"
    save_resnet(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        for loader in (load_file, load_model):
            with pytest.raises(CheckpointError) as info:
                loader(str(path))
            assert str(info.value).startswith(
                f"cannot load {path}: not a valid pocketflow-torch file (")
    model = resnet(20)
    with pytest.raises(CheckpointError, match="not a valid pocketflow-torch file"):
        load_weights_from(model, str(truncated))


def test_plain_torch_save_without_format_tag(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": resnet(20).state_dict(), "kind": "model"}, path)
    for loader in (load_file, load_model):
        with pytest.raises(CheckpointError) as info:
            loader(str(path))
        assert str(info.value) == f"{path} is not a pocketflow-torch file (missing format tag)"
    torch.save([1, 2, 3], path)  # not even a dict
    with pytest.raises(CheckpointError, match="not a pocketflow-torch file"):
        load_file(str(path))


class Exploit:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {shlex.quote(self.marker)}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "pocketflow-torch", "version": 1, "kind": "model",
                "spec": net_spec("resnet20"), "state_dict": {}, "x": Exploit(str(marker))}, path)
    assert not marker.exists()
    for loader in (load_file, load_model):
        with pytest.raises(CheckpointError) as info:
            loader(str(path))
        assert "not a valid pocketflow-torch file (UnpicklingError" in str(info.value)
        assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_weights_from(resnet(20), str(path))
    assert not marker.exists()
    # control: the payload is live, an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.read_text().strip() == "pwned"


def test_unknown_net_in_artifact_spec(tmp_path):
    path = tmp_path / "m.ckpt"
    save_file(str(path), "model", {"spec": {"net": "resnet21", "kwargs": {}}, "state_dict": {}})
    with pytest.raises(CheckpointError) as info:
        load_model(str(path))
    message = str(info.value)
    assert f"{path}: cannot rebuild the architecture: unknown net 'resnet21'" in message
    assert "valid nets:" in message and "resnet20" in message
    save_file(str(path), "model", {"state_dict": {}})
    with pytest.raises(CheckpointError, match="does not record an architecture spec and weights"):
        load_model(str(path))


# -- checkpoints of another architecture --------------------------------------------------------
def test_other_depth_names_missing_keys(tmp_path):
    path = tmp_path / "r20.ckpt"
    save_resnet(path, 20)
    target = resnet(32)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights_from(target, str(path))
    message = str(info.value)
    assert message.startswith(f"{path} does not fit the model (missing keys: layer1.3.")
    # 2 extra blocks x 3 stages x 12 tensors = 72 missing keys: 8 named, the rest counted
    assert "layer1.3.bn1.weight" in message and message.endswith("(+64 more))")
    assert "unexpected keys" not in message and "shape mismatch" not in message
    # nothing was half-loaded
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    # and the other way round: resnet32 weights into a resnet20 are "unexpected"
    path32 = tmp_path / "r32.ckpt"
    save_resnet(path32, 32)
    with pytest.raises(CheckpointError, match=r"unexpected keys: layer1\.3\."):
        load_weights_from(resnet(20), str(path32))


def test_other_class_count_names_shape_mismatch(tmp_path):
    path = tmp_path / "r20_10.ckpt"
    save_resnet(path, 20, num_classes=10)
    with pytest.raises(CheckpointError) as info:
        load_weights_from(resnet(20, num_classes=5), str(path))
    message = str(info.value)
    assert "shape mismatch: fc.weight (10, 64) vs (5, 64), fc.bias (10,) vs (5,)" in message \
        or "shape mismatch: fc.bias (10,) vs (5,), fc.weight (10, 64) vs (5, 64)" in message
    assert "missing keys" not in message
    loaded = resnet(20, num_classes=10)
    assert load_weights_from(loaded, str(path))["kind"] == "model"


# -- atomic_save and RNG state ----------------------------------------------------------------
def test_atomic_save_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "x.ckpt"
    for i in range(3):
        atomic_save({"i": i}, str(path))
    assert torch.load(path, weights_only=True) == {"i": 2}
    assert os.listdir(path.parent) == ["x.ckpt"]


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.ckpt"
    save_file(str(path), "checkpoint", {"step": 10, "w": torch.arange(4.0)})
    before = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(WriteError, match=f"^cannot write {path}: No space left on device \\(ENOSPC\\)"):
        save_file(str(path), "checkpoint", {"step": 20, "w": torch.zeros(4)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_file(str(path), kind="checkpoint")["step"] == 10
    assert os.listdir(tmp_path) == ["x.ckpt"]


def draws() -> tuple:
    return (torch.rand(5).tolist(), np.random.rand(5).tolist(), [random.random() for _ in range(5)],
            float(np.random.randn()))


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    np.random.randn()  # a cached Gaussian is part of numpy's state
    path = tmp_path / "rng.ckpt"
    save_file(str(path), "checkpoint", {"rng": rng_state()})
    expected = draws()
    assert draws() != expected  # the generators moved on
    set_rng_state(load_file(str(path), kind="checkpoint")["rng"])
    assert draws() == expected


# -- NaN loss -----------------------------------------------------------------------------------
class NanAfter(ModelHelper):
    """The training loss becomes NaN from training step ``NAN_FROM`` (0-based) on."""

    NAN_FROM = 4

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_steps = 0

    def forward_train(self, model, inputs):
        self.train_steps += 1
        return super().forward_train(model, inputs)

    def calc_loss(self, labels, outputs):
        loss, metrics = super().calc_loss(labels, outputs)
        if torch.is_grad_enabled() and self.train_steps > self.NAN_FROM:
            loss = loss * float("nan")
        return loss, metrics


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_digits_values):
    values = {**tiny_digits_values, "save_step": 2, "summ_step": 100}
    with pytest.raises(TrainingDivergedError) as info:
        run(NanAfter, values)
    message = str(info.value)
    # NaN in the loss of step 5 -> detected at the next check (the save at step 6)
    assert message == (
        f"train: the training loss became NaN or infinite at step 5; stopped at step 6 without "
        f"saving the diverged weights; the last good checkpoint (step 4) is kept at "
        f"{values['save_path']}. Lower the learning rate (--lrn_rate_init, or the learner's "
        "own) or check the data.")
    assert info.value.step == 5
    ckpt = load_file(values["save_path"], kind="checkpoint")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not os.path.exists(values["save_path_eval"])  # no artifact from a diverged run
    model = resnet(20)
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 1, 16, 16))).all()


def test_huge_learning_rate_keeps_the_last_checkpoint_that_evaluates(tiny_digits_values):
    """At lr 1e2 the weights of step 2 are finite but evaluate to NaN: the checkpoint of step 1
    (which evaluates) is kept, the run stops naming step 2."""
    values = {**tiny_digits_values, "lrn_rate_init": 1e2, "save_step": 1, "summ_step": 100}
    with pytest.raises(TrainingDivergedError) as info:
        run(ModelHelper, values)
    assert str(info.value).startswith("train: at step 2 the model evaluates to a NaN or infinite "
                                      "loss (its weights exploded); stopped without saving it; "
                                      f"the last good checkpoint (step 1) is kept at "
                                      f"{values['save_path']}.")
    ckpt = load_file(values["save_path"], kind="checkpoint")
    assert ckpt["step"] == 1
    model, _ = load_model(values["save_path"])
    helper = ModelHelper(ModelHelper.Config(image_size=8))
    inputs = torch.stack([helper.build_dataset_eval()[i][0] for i in range(64)])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(inputs)).all()
