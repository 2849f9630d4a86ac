"""The tutorial (examples/convnet_at_fmnist.py) end to end on a tiny synthetic Fashion-MNIST.

The idx files are written in the native format; training runs in-process through the same
``learners.launch.run`` the entry script calls, with flags parsed from a command line.
"""
import json
import os
import sys

import numpy as np
import pytest
import torch
from absl import flags

from datasets.fmnist import IMAGE_MAGIC, LABEL_MAGIC
from learners import launch
from nets import registry
from tests.conftest import synthetic_fmnist

MODULE = "examples.convnet_at_fmnist"


def _write_idx(path, magic, array):
    """idx file: big-endian int32 magic, one int32 per dimension, then the uint8 data."""
    header = int(magic).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big")
                                                      for d in array.shape)
    with open(path, "wb") as fh:
        fh.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _write_fmnist(root, n_train=64, n_test=32):
    os.makedirs(root)
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_fmnist(n, seed)
        _write_idx(os.path.join(root, f"{split}-images-idx3-ubyte"), IMAGE_MAGIC, images)
        _write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte"), LABEL_MAGIC, labels)


@pytest.fixture
def example(monkeypatch):
    """The tutorial module, imported fresh; its net registration is undone afterwards so the
    registry (and ``list_nets()`` in other tests) holds only the built-in nets again."""
    registry.list_nets()  # the built-ins register first, into the original dict
    monkeypatch.setattr(registry, "_NETS", dict(registry._NETS))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    import importlib

    module = importlib.import_module(MODULE)
    yield module
    sys.modules.pop(MODULE, None)


def _flag_values(helper_cls, argv):
    fv = flags.FlagValues()
    launch.define_flags(fv, helper_cls)
    fv(["prog", *argv])
    return fv.flag_values_dict()


def test_tutorial_trains_saves_and_reloads(example, tmp_path, monkeypatch):
    from learners.run.outputs import Outputs
    from compression.artifacts import load_model

    saved = {}  # the trained model itself, as the runner hands it to save_artifact
    original_save = Outputs.save_artifact

    def save_artifact(self, model, spec, meta):
        saved["model"] = model
        return original_save(self, model, spec, meta)

    monkeypatch.setattr(Outputs, "save_artifact", save_artifact)

    data_dir = str(tmp_path / "fashion-mnist")
    _write_fmnist(data_dir)
    save_path_eval = str(tmp_path / "models_eval" / "model.ckpt")
    # 64 images / batch 16 = 4 steps per epoch; 12 epochs x nb_epochs_rat 2 = 96 steps
    values = _flag_values(example.ModelHelper, [
        "--learner=full-prec",
        f"--data_dir_local={data_dir}",
        f"--save_path={tmp_path / 'models' / 'model.ckpt'}",
        f"--save_path_eval={save_path_eval}",
        "--log_dir=",
        "--report_latency=false",
        "--batch_size=16",
        "--batch_size_eval=32",
        "--nb_epochs_rat=2",
        "--lrn_rate_init=0.4",
        "--convnet_width=16",
        "--device=cpu",
    ])
    # one intra-op thread: fastest for this tiny net, and robust when other jobs share the CPUs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = launch.run(example.ModelHelper, values)
    finally:
        torch.set_num_threads(threads)

    assert report["accuracy"]["full"] >= 0.9, report
    report_path = os.path.join(os.path.dirname(save_path_eval), "report.json")
    with open(report_path) as fh:
        on_disk = json.load(fh)
    assert on_disk["model"] == "convnet_16" and on_disk["dataset"] == "fmnist"
    assert on_disk["accuracy"]["full"] == report["accuracy"]["full"]

    # the artifact rebuilds the net from its spec alone and reproduces the logits
    reloaded, artifact = load_model(save_path_eval)
    assert artifact["spec"] == {"net": "convnet_fmnist",
                                "kwargs": {"num_classes": 10, "in_channels": 1, "width": 16}}
    assert type(reloaded) is example.ConvNet
    test = example.ModelHelper(example.Config(data_dir_local=data_dir)).build_dataset_eval()
    inputs = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        logits_trained = saved["model"].eval()(inputs)
        logits_reloaded = reloaded.eval()(inputs)
    assert (logits_reloaded - logits_trained).abs().max().item() < 1e-6
    accuracy = (logits_reloaded.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(report["accuracy"]["full"])
