"""PocketFlowModelHelper: a helper written against PocketFlow's interface (one-hot labels,
``calc_loss(labels, outputs, trainable_vars)`` with its own decay, ``setup_lrn_rate(step) ->
(lr, nb_iters)``, datasets from ``build_dataset_*``) seen by the learners through its adapter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from absl import flags
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nets.abstract_model_helper import AbstractModelHelper, HelperConfig
from nets.helpers import resolve_helper
from nets.pocketflow_compat import mgw, setup_lrn_rate_exponential_decay, \
    setup_lrn_rate_piecewise_constant
from nets.pocketflow_helper import PocketFlowModelHelper, framework_helper
from utils.config import ConfigError

DECAY = 1e-3


class OneHot(Dataset):
    """8 samples of 2x4x4, label i % 3, given one-hot as PocketFlow's parse_fn gives them."""

    def __init__(self, n: int = 8) -> None:
        gen = torch.Generator().manual_seed(n)
        self.x = torch.randn(n, 2, 4, 4, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], F.one_hot(torch.tensor(i % 3), 3).float()


class Port(PocketFlowModelHelper):
    """A PocketFlow helper, as a port keeps it: its methods, names and arguments."""

    def __init__(self, data_format="channels_first"):
        super().__init__(data_format)
        self.calls, self.warm, self.dumps = [], 0, []

    def build_dataset_train(self, enbl_trn_val_split=False):
        data = OneHot(12)
        if enbl_trn_val_split:
            return torch.utils.data.Subset(data, range(4, 12)), torch.utils.data.Subset(data, range(4))
        return DataLoader(data, batch_size=4)   # a loader: its dataset is used

    def build_dataset_eval(self):
        return OneHot(6)

    def build_model(self):
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 3))

    def warm_start(self, model):
        self.warm += 1

    def forward_train(self, inputs, labels=None):
        return self.model(inputs) * 2.0

    def calc_loss(self, labels, outputs, trainable_vars):
        self.calls.append((labels.clone(), len(trainable_vars)))
        loss = F.cross_entropy(outputs, labels)
        loss += DECAY * sum(0.5 * (v ** 2).sum() for v in trainable_vars)
        return loss, {"accuracy": (labels.argmax(1) == outputs.argmax(1)).float().mean()}

    def setup_lrn_rate(self, global_step):
        return 0.1 * 0.5 ** (global_step // 10), 35

    def dump_n_eval(self, outputs, action):
        self.dumps.append(action if outputs is None else (action, tuple(outputs.shape)))

    @property
    def model_name(self):
        return "port"

    @property
    def dataset_name(self):
        return "onehot"


def test_the_adapter_speaks_the_learners_interface():
    helper = framework_helper(Port)(HelperConfig(batch_size=4), seed=3)
    assert isinstance(helper, AbstractModelHelper) and helper.port.seed == 3
    assert (helper.model_name, helper.dataset_name) == ("port", "onehot")
    assert helper.input_shape == (2, 4, 4) and helper.num_classes == helper.nb_classes == 3
    # one-hot labels become class indices for the learners; the loader's dataset is used
    train = helper.build_dataset_train()
    assert len(train) == helper.nb_smpls_train == 12 and [train[i][1] for i in range(4)] == [0, 1, 2, 0]
    sub, val = helper.build_dataset_train(enbl_trn_val_split=True), helper.build_dataset_val()
    assert (len(sub), len(val), helper.nb_smpls_eval) == (8, 4, 6)
    # the network: built by the port, warm-started every time
    model = helper.build_model()
    assert helper.port.warm == 2            # once for num_classes' probe, once here
    assert helper.net_spec()["net"] is None and helper.net_spec()["module"].endswith("Sequential")
    # forward: the port's, with self.model bound to the network being trained, then unbound
    x = torch.stack([train[i][0] for i in range(4)])
    labels = torch.tensor([0, 1, 2, 0])
    outputs = helper.forward_train(model, x)
    assert torch.allclose(outputs, model(x) * 2.0) and helper.port.model is None
    # the loss: one-hot labels and the trainable parameters go to the port; its decay is the
    # only decay (the optimizer adds none)
    loss, metrics = helper.calc_loss(labels, outputs)
    seen, nb_vars = helper.port.calls[-1]
    assert torch.equal(seen, F.one_hot(labels, 3).float()) and nb_vars == 4
    decay = DECAY * sum(0.5 * (p ** 2).sum() for p in model.parameters())
    assert loss.item() == pytest.approx((F.cross_entropy(outputs, labels) + decay).item(), rel=1e-6)
    assert float(metrics["accuracy"]) == float((outputs.argmax(1) == labels).float().mean())
    assert helper.weight_decay == 0.0
    # the schedule: PocketFlow's (lr, nb_iters) per step
    schedule = helper.lr_schedule(1)
    assert schedule.nb_iters == helper.nb_iters_train(1) == 35
    assert [schedule(s) for s in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]


def test_dump_n_eval_brackets_an_evaluation():
    helper = framework_helper(Port)(HelperConfig())
    model = helper.build_model().eval()
    x = torch.randn(5, 2, 4, 4)
    helper.forward_eval(model, x)                   # outside an evaluation: no dump
    helper.evaluation_begin()
    helper.forward_eval(model, x)
    helper.forward_eval(model, x[:2])
    helper.evaluation_end()
    assert helper.port.dumps == ["init", ("dump", (5, 3)), ("dump", (2, 3)), "eval"]


def test_wrapping_classes_instances_and_names():
    adapter = framework_helper(Port)
    assert framework_helper(Port) is adapter and issubclass(adapter, AbstractModelHelper)
    assert resolve_helper(f"{__name__}:Port") is adapter
    assert framework_helper(adapter) is adapter                   # idempotent
    port = Port()                                                 # built the PocketFlow way
    wrapped = framework_helper(port)
    assert wrapped.port is port and isinstance(wrapped.cfg, HelperConfig)


def test_a_port_that_cannot_work_here_is_refused_by_name():
    with pytest.raises(ConfigError, match="forward_w_labels=True is not supported"):
        PocketFlowModelHelper("channels_first", forward_w_labels=True)
    with pytest.raises(ConfigError, match="data_format must be one of channels_first, channels_last"):
        PocketFlowModelHelper("NCHW")

    class Iterators(Port):
        def build_dataset_eval(self):
            return iter([(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3))])   # a tf.data habit

    with pytest.raises(ConfigError, match=r"build_dataset_eval\(\) returned a list_iterator: "
                                          r"return a torch Dataset"):
        framework_helper(Iterators)(HelperConfig()).build_dataset_eval()

    class NoSplit(Port):
        def build_dataset_train(self, enbl_trn_val_split=False):
            return OneHot(12)

    with pytest.raises(ConfigError, match=r"must return \(train, val\)"):
        framework_helper(NoSplit)(HelperConfig()).build_dataset_val()


@pytest.fixture
def lr_flags():
    """PocketFlow's learning-rate flags on absl's FLAGS, as a port's modules define them (the
    ported tutorial's modules: absl refuses a second definition from another module)."""
    import examples.pocketflow_fmnist.convnet_at_fmnist  # noqa: F401  (defines the flags)

    fv = flags.FLAGS
    saved = {name: fv[name].value for name in ("lrn_rate_init", "batch_size_norm",
                                               "nb_smpls_train", "nb_epochs_rat")}
    if not fv.is_parsed():
        fv.mark_as_parsed()
    fv.lrn_rate_init, fv.batch_size_norm, fv.nb_smpls_train, fv.nb_epochs_rat = 0.1, 128, 1000, 0.5
    yield fv
    for name, value in saved.items():
        fv[name].value = value


def test_pocketflow_learning_rate_utilities(lr_flags):
    # batch 64: lr 0.05, 15.625 batches per epoch; epochs 40/80 x nb_epochs_rat 0.5 -> steps 312, 625
    lr = [setup_lrn_rate_piecewise_constant(s, 64, [40, 80], [1.0, 0.1, 0.01])
          for s in (0, 312, 313, 625, 626)]
    assert lr == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005])  # tf: value i while step <= bound i
    # staircase decay x0.5 every 4 epochs x 0.5 -> 31 steps
    assert [setup_lrn_rate_exponential_decay(s, 64, 4, 0.5) for s in (0, 30, 31, 62)] == \
        pytest.approx([0.05, 0.05, 0.025, 0.0125])
    with pytest.raises(ValueError, match="len\\(decay_rates\\) must be len\\(idxs_epoch\\) \\+ 1"):
        setup_lrn_rate_piecewise_constant(0, 64, [40], [1.0])


def test_mgw_reads_the_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "HOROVOD_SIZE", "HOROVOD_RANK", "OMPI_COMM_WORLD_SIZE",
                 "OMPI_COMM_WORLD_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (mgw.size(), mgw.rank(), mgw.local_rank()) == (1, 0, 0)
    monkeypatch.setenv("HOROVOD_SIZE", "4")
    monkeypatch.setenv("HOROVOD_RANK", "2")
    assert (mgw.size(), mgw.rank(), mgw.local_size()) == (4, 2, 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert mgw.size() == 2


def test_a_plain_dataset_of_int_labels_passes_unchanged():
    class IntLabels(Port):
        def build_dataset_eval(self):
            return TensorDataset(torch.randn(4, 2, 4, 4), torch.tensor([2, 0, 1, 2]))

    helper = framework_helper(IntLabels)(HelperConfig())
    assert [helper.build_dataset_eval()[i][1] for i in range(4)] == [2, 0, 1, 2]
