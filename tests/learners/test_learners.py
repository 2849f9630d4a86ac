"""The learner framework: registry, the shared loop, distillation, full-prec end to end."""
from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch

from learners.base import Learner
from training.distillation import DistillationCallback, distillation_loss
from learners.launch import run
from learners.registry import learner_class, list_learners
from training.trainer import StepState
from nets import resnet_at_digits
from nets.registry import net_spec
from compression.artifacts import load_model, save_model
from tests.conftest import flag_values


# -- registry ------------------------------------------------------------------------------
def test_unknown_learner_lists_valid_names():
    with pytest.raises(ValueError) as err:
        learner_class("no-such-learner")
    for name in list_learners():
        assert name in str(err.value)


@pytest.mark.parametrize("name", list_learners())
def test_every_learner_implements_the_protocol(name):
    cls = learner_class(name)
    assert issubclass(cls, Learner) and cls.learner_name == name
    assert not getattr(cls, "__abstractmethods__", None), cls.__abstractmethods__
    assert cls.compress is not Learner.compress
    if cls.config_cls is not None:  # its options: an unprefixed dataclass, flags with a prefix
        assert dataclasses.is_dataclass(cls.config_cls) and cls.flag_prefix
        names = {f.name for f in dataclasses.fields(cls.config_cls)}
        assert not any(n.startswith(cls.flag_prefix + "_") for n in names), names


# -- distillation --------------------------------------------------------------------------
def test_distillation_loss_matches_hand_computation():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    temp = 2.0
    p_t = [math.exp(v / temp) for v in (3.0, 2.0, 1.0)]
    p_t = [v / sum(p_t) for v in p_t]
    log_z = math.log(sum(math.exp(v / temp) for v in (1.0, 2.0, 3.0)))
    log_q = [v / temp - log_z for v in (1.0, 2.0, 3.0)]
    expected = -sum(p * q for p, q in zip(p_t, log_q))
    assert distillation_loss(student, teacher, temp).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.3403, abs=1e-4)  # 0.5065*1.6802 + 0.3072*1.1802 + 0.1863*0.6802
    # identical logits: the loss is the teacher's entropy, its minimum over students
    same = distillation_loss(teacher, teacher, temp).item()
    entropy = -sum(p * math.log(p) for p in p_t)
    assert same == pytest.approx(entropy, abs=1e-6)
    assert same < expected


def test_distillation_callback_adds_weighted_term():
    teacher = torch.nn.Linear(4, 3)
    inputs = torch.randn(5, 4)
    outputs = torch.randn(5, 3, requires_grad=True)
    state = StepState(0, 0, inputs, torch.zeros(5, dtype=torch.long), outputs=outputs,
                      loss=torch.tensor(1.5))
    DistillationCallback(teacher, loss_w=4.0, temperature=4.0).before_backward_pass(None, state)
    with torch.no_grad():
        expected = 1.5 + 4.0 * distillation_loss(outputs, teacher(inputs), 4.0)
    assert state.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert state.metrics["loss_dst"].item() == pytest.approx(expected.item() - 1.5, rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())


class LenetAtDigits(resnet_at_digits.ModelHelper):
    """A student with another architecture than the ResNet teacher."""

    @property
    def model_name(self) -> str:
        return "lenet"

    def net_spec(self) -> dict:
        return net_spec("lenet", num_classes=10, in_channels=1, input_size=self.cfg.image_size)


def test_distillation_from_a_different_architecture(tmp_path):
    teacher_path = str(tmp_path / "teacher.pt")
    teacher_helper = resnet_at_digits.ModelHelper()
    torch.manual_seed(0)
    save_model(teacher_path, teacher_helper.build_model(), teacher_helper.net_spec())
    values = flag_values(tmp_path, "--enbl_dst", f"--dst_model_path={teacher_path}",
                         "--nb_epochs_rat=0.05", "--lrn_rate_init=0.02", helper=LenetAtDigits)
    report = run(LenetAtDigits, values)
    assert report["model"] == "lenet"
    student, _ = load_model(values["save_path_eval"])
    assert type(student).__name__ == "LeNet"
    assert 0.0 <= report["accuracy"]["full"] <= 1.0


# -- full-prec end to end --------------------------------------------------------------------
def test_full_prec_smoke_writes_artifact_and_report(tmp_path):
    values = flag_values(tmp_path, "--nb_epochs_rat=0.1", "--save_step=40")
    report = run(resnet_at_digits.ModelHelper, values)
    saved = json.load(open(os.path.join(tmp_path, "eval", "report.json")))
    assert saved["accuracy"]["full"] == pytest.approx(report["accuracy"]["full"])
    assert saved["learner"] == "full-prec" and saved["dataset"] == "digits"
    assert saved["params"]["full"] == 272186          # ResNet-20, 1 input channel, 10 classes
    assert saved["accuracy"]["compressed"] is None    # nothing invented
    assert report["accuracy"]["full"] > 0.5           # 3 epochs already learn something
    model, _ = load_model(values["save_path_eval"])
    assert sum(p.numel() for p in model.parameters()) == 272186
