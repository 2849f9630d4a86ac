"""Hostile artifacts: a spec edited and saved again with a valid SHA-256 must be refused
quickly, with bounded memory, naming the field, before any module is built for real.
Each case runs in a child process whose own peak memory (VmHWM) and time are measured."""
from __future__ import annotations

import copy

import pytest

from compression.artifacts import save_model
from nets import resnet_at_digits
from tests.conftest import load_in_child
from utils.checkpoint import load_file, save_file


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    helper = resnet_at_digits.ModelHelper(resnet_at_digits.Config(image_size=8))
    path = tmp_path_factory.mktemp("hostile") / "good.ckpt"
    save_model(str(path), helper.build_model(), helper.net_spec(), helper.describe())
    return path


def edited(good, tmp_path, change) -> str:
    """``good`` with its spec changed by ``change`` and saved again (the digest is valid)."""
    obj = load_file(str(good))
    spec = copy.deepcopy(obj["spec"])
    change(spec)
    payload = {key: value for key, value in obj.items() if key not in ("kind", "sha256", "digest")}
    payload["spec"] = spec
    path = tmp_path / "edited.ckpt"
    save_file(str(path), "model", payload)
    return str(path)


def probe(path) -> dict:
    return load_in_child("compression.artifacts:load_model", path)


def set_classes(n):
    return lambda spec: spec["kwargs"].__setitem__("num_classes", n)


def thin_huge(spec):
    spec["transforms"] = [{"type": "thin", "modules": {"fc": {
        "class": "Linear", "in_features": 3_000_000_000, "out_features": 10, "bias": True}}}]


@pytest.mark.parametrize("change, field", [
    (set_classes(400_000_000), "spec['kwargs']['num_classes'] = 400000000 is out of bounds"),
    (set_classes(8_000_000), "spec['kwargs']['num_classes'] = 8000000 is out of bounds"),
    (thin_huge, "['in_features'] = 3000000000 is out of bounds"),
    (set_classes(50_000), "shape mismatch: fc.bias (10,) vs (50000,)"),
])
def test_an_edited_spec_is_refused_quickly_with_bounded_memory(good, tmp_path, change, field):
    result = probe(edited(good, tmp_path, change))
    assert field in result["outcome"], result["outcome"]
    assert result["seconds"] < 5.0 and result["peak_mb"] < 300, result


def test_the_unedited_file_still_loads(good):
    assert probe(str(good))["outcome"] == "loaded"
