"""Tutorial: bring your own network and dataset (a small ConvNet on Fashion-MNIST).

Every learner (full-precision training, distillation, and the compression learners) talks to
a model through one object, the *ModelHelper*. It answers four questions:

    1. which network?       ``net_spec()``: a plain-dict recipe, stored inside every saved model
    2. which data?          ``load_train(augment)`` / ``load_eval()``
    3. which options?       ``Config``: a dataclass whose fields become command-line flags
    4. how long to train?   ``nb_epochs``, ``lr_decay_epochs``, ``lr_decay_rates``

Loss (cross-entropy), metrics (accuracy), the optimizer (momentum SGD + weight decay), the
training loop, checkpoints, multi-process training and the report are the framework's job.

This file holds the three pieces a user writes, in order: the net (section 1), the
options (section 2) and the helper (section 3). Everything they use comes from one module,
``pocketflow_torch`` (its docstring lists every extension point), the Fashion-MNIST reader
included. The entry script ``examples/convnet_at_fmnist_run.py`` is two lines of glue:
``entry("convnet_at_fmnist")``; for a helper of your own, ``register_helper("my_name",
MyHelper)`` makes ``entry("my_name")`` and the tools' ``--helper=my_name`` find it.

Data: the four Fashion-MNIST idx files (``.gz`` or not), as downloaded from
https://github.com/zalandoresearch/fashion-mnist, in one directory:

    ./data/fashion-mnist/train-images-idx3-ubyte.gz   train-labels-idx1-ubyte.gz
                         t10k-images-idx3-ubyte.gz    t10k-labels-idx1-ubyte.gz

Train, then evaluate the saved model again (from the repository root):

    ./scripts/run_local.sh examples/convnet_at_fmnist_run.py --learner=full-prec
    ./scripts/run_local.sh examples/convnet_at_fmnist_run.py --exec_mode=eval
    ./scripts/run_local.sh examples/convnet_at_fmnist_run.py -n=2        # two processes

Flags of section 2 and of the framework (``--save_path_eval``, ``--seed``, ...) are listed by
``python examples/convnet_at_fmnist_run.py --helpfull``. The run writes the model artifact to
``--save_path_eval`` and ``report.json`` beside it.

Using the saved model elsewhere: the artifact stores the spec ``{"net": "convnet_fmnist",
"kwargs": {...}}``, not Python code, so the builder must be registered before loading::

    import examples.convnet_at_fmnist  # noqa: F401  (registers "convnet_fmnist")
    from pocketflow_torch import load_model
    model = load_model("./models_eval/model.ckpt")

The tools read it the same way (``pocketflow-summary --model=./models_eval/model.ckpt
--helper=convnet_at_fmnist``: the helper's module is imported first).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pocketflow_torch import (FashionMnist, HelperConfig, ImageClassificationHelper, check,
                              net_spec, option, register_net)

# =================================================================================================
# 1. The network
# =================================================================================================
# Any nn.Module works for full-precision training. To suit the compression learners too:
#   * keep ``forward`` free of data-dependent Python control flow, so ``torch.fx`` can trace it
#     (compression steps that rewrite a model work on its traced graph);
#   * use modules (nn.ReLU, nn.MaxPool2d), not functional calls, for layers a compression step
#     may need to find, hook or replace;
#   * convolutions followed by BatchNorm need no bias;
#   * ``stage_names`` lists the submodules whose outputs are natural intermediate features
#     (learners that attach auxiliary heads use them), from high to low resolution.


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=False)]


class ConvNet(nn.Module):
    """Three 3x3 conv + BN + ReLU blocks (the first two max-pooled), global average pool, FC.

    With ``width`` = w the blocks have w, 2w and 4w channels; 28x28 inputs become 14x14, 7x7
    and 7x7 feature maps. Global average pooling makes the net work for any input size.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.block1 = nn.Sequential(*_conv_bn_relu(in_channels, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(*_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        self.stage_names = ["block1", "block2", "block3"]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# Registering a *builder* under a name is what lets a saved model be rebuilt from its spec
# (``net_spec("convnet_fmnist", num_classes=10, in_channels=1, width=32)``) without pickled code:
# the keyword arguments of the builder are exactly what the spec stores, so keep them plain
# (str / int / float / bool / lists / dicts). Names are global: pick one no built-in net uses.
@register_net("convnet_fmnist")
def convnet_fmnist(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> ConvNet:
    return ConvNet(num_classes, in_channels, width)


# =================================================================================================
# 2. The options
# =================================================================================================
# ``HelperConfig`` already has the data and schedule options every helper shares
# (data_dir_local, batch_size, batch_size_eval, nb_epochs_rat, lrn_rate_init, batch_size_norm,
# loss_w_dcy, nb_threads). Redeclare a field to change its default for this helper, and add
# fields for your own options. Each field becomes a flag (``--convnet_width=64``) with the help
# text given to ``option``. Validate in ``__post_init__`` with ``check``: a bad value then
# stops the run with one clear message naming the flag (exit status 2), not a traceback.


@dataclass
class Config(HelperConfig):
    # defaults changed for this helper
    data_dir_local: str = option("./data/fashion-mnist",
                                 "directory with the Fashion-MNIST idx files (.gz or not)")
    batch_size: int = option(128, "training mini-batch size per process")
    batch_size_eval: int = option(500, "evaluation mini-batch size")
    lrn_rate_init: float = option(0.1, "initial learning rate for a global batch of batch_size_norm")
    loss_w_dcy: float = option(5e-4, "weight decay (L2) coefficient")
    # an option of this helper only
    convnet_width: int = option(32, "channels of the ConvNet's first block (then 2x and 4x)")

    def __post_init__(self) -> None:
        super().__post_init__()  # keeps the shared checks (positive batch sizes, ...)
        check(self.convnet_width >= 1, "convnet_width",
              f"must be a positive number of channels, got {self.convnet_width}")


# =================================================================================================
# 3. The ModelHelper
# =================================================================================================
# ``ImageClassificationHelper`` is the base for "a training set and a test set" data: implement
# ``load_train`` and ``load_eval`` and it derives the three datasets learners ask for:
#   * train: everything ``load_train`` returns, used for training;
#   * val:   ``nb_smpls_val`` training images held out by a FIXED permutation (same for every
#            run and seed), used by searches (e.g. pruning-ratio or bit-width rewards) so that
#            they never peek at the test set; ``train_sub`` is the rest of the training set;
#   * test:  ``load_eval``, the accuracy printed in the report.
# Everything else has a sensible default in ``AbstractModelHelper``: cross-entropy loss with an
# ``accuracy`` metric (``calc_loss``), ``forward_train``/``forward_eval`` = ``model(x)``, and a
# piecewise-constant LR schedule scaled linearly with the global batch (``lr_schedule``).
# Override any of them when your task needs it (see ``nets/resnet_at_digits.py`` for a cosine
# schedule).


class ModelHelper(ImageClassificationHelper):
    """ConvNet on Fashion-MNIST: 60,000 training (5,000 held out as "val") and 10,000 test
    images, 1 x 28 x 28, 10 classes."""

    Config = Config  # the options above; the entry script turns them into flags

    # The schedule, in epochs of the training set (60,000 images): 468 steps per epoch at the
    # default batch of 128, so 5,625 steps in all. The learning rate is lrn_rate_init (scaled by
    # global batch / batch_size_norm) for 6 epochs, then x0.1 until epoch 9, then x0.01.
    # ``--nb_epochs_rat=0.5`` halves the whole schedule, boundaries included (compression
    # learners use it for shorter fine-tuning).
    nb_epochs = 12.0
    lr_decay_epochs = (6, 9)
    lr_decay_rates = (1.0, 0.1, 0.01)
    nb_smpls_val = 5000

    # -- identity: names in logs and report.json; input_shape for FLOPs, latency and export ----
    @property
    def model_name(self) -> str:
        return f"convnet_{self.cfg.convnet_width}"

    @property
    def dataset_name(self) -> str:
        return "fmnist"

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def input_shape(self) -> tuple:
        return (1, 28, 28)  # (C, H, W) of one input, without the batch dimension

    # -- model: the recipe, not the module. ``build_model()`` (inherited) builds it, and every
    # artifact stores it, so compressed models reload with ``pocketflow_torch.load_model``. ----
    def net_spec(self) -> dict:
        return net_spec("convnet_fmnist", num_classes=self.num_classes, in_channels=1,
                        width=self.cfg.convnet_width)

    # -- data: datasets yield (normalised float image, int label). ``FashionMnist`` (one of the
    # readers ``pocketflow_torch`` exports, with ``Cifar10`` and ``Ilsvrc12``; for data of your
    # own, ``InMemoryImageDataset``) reads the idx files into memory; with ``augment`` it pads
    # 2 pixels + crops at random + flips. ``seed`` (the run's --seed) drives the augmentation,
    # identically with any number of loader workers or processes. Missing or malformed files
    # raise ``DataError`` (raise it from your own reader too), which the entry script prints as
    # one message naming the expected layout. -----------------------------------------------
    def load_train(self, augment: bool):
        return FashionMnist(self.cfg.data_dir_local, "train", augment=augment, seed=self.seed)

    def load_eval(self):
        return FashionMnist(self.cfg.data_dir_local, "test", augment=False, seed=self.seed)
