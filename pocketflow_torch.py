"""pocketflow-torch's front door: the Python API and every way to extend the framework.

    import pocketflow_torch as pf
    result = pf.compress(model, train_data, eval_data, "chn-pruned-rmt", prune_ratio=0.5)

Everything a user writes imports from here only (``examples/convnet_at_fmnist.py`` does).

Use (``learners.api``; README "Python API"):
    ``compress``, ``evaluate``, ``load_model``, ``Result`` (what ``compress`` returns),
    ``list_learners``; for serving in eager PyTorch ``tune_malloc()`` once per process and
    ``fold_batchnorm(model)`` (docs/speed.md).

Your network and data (README "Write your own ModelHelper"):
    ``register_net`` (a builder, so artifacts rebuild the net from ``net_spec(name, **kwargs)``);
    ``ImageClassificationHelper`` (train/test data) or ``AbstractModelHelper`` (anything else)
    with a ``Config`` subclassing ``HelperConfig``; ``register_helper`` names it for
    ``entry(name)`` and the tools' ``--helper=name``; ``entry(helper)`` is a whole entry script
    (flags, any learner). Data: the readers ``FashionMnist``, ``Cifar10``, ``Ilsvrc12``;
    ``InMemoryImageDataset`` for your own tensors (seeded augmentation); raise ``DataError`` for
    missing or malformed files (one message, exit status 2). A PocketFlow helper keeps its
    interface as a ``PocketFlowModelHelper`` (docs/migrating.md; ``nets.pocketflow_compat``
    has PocketFlow's ``mgw`` and learning-rate utilities).

Options (a config dataclass's fields become flags):
    ``option(default, help, choices=...)``, ``nested(OtherConfig)``, and
    ``check(condition, field, message)`` in ``__post_init__``.

A learner (docs/design.md): subclass ``Learner``, return a ``LearnerResult`` from
    ``compress(model, spec)``, and ``register_learner("name", config=MyConfig, prefix="my")``.

Channel pruning of new layers and ops (docs/design.md, "adding a layer type"):
    ``register_pruner(MyLayer)`` on a ``LayerPruner`` subclass (``ReaderPruner`` for conv-like,
    ``ChannelwisePruner`` for per-channel parameters, ``PassthroughPruner``, ``MixingPruner``
    to keep channels whole); ``register_op(fn_or_method_name, rule)`` for a functional op.

Channel selection: ``register_selection("name")`` (a criterion for ``SelectionOptions.selection``,
    ``--cpr_selection``) and ``register_group_criterion("name")`` (residual groups).

Quantization: ``register_weight_quantizer`` (a weight parametrization the packed format and
    ``quantizers_of`` know). Artifacts: ``register_spec_transform("type")`` rebuilds an
    architecture change recorded in a spec's ``transforms``. A runtime:
    ``register_format`` of a ``DeployFormat`` adds an ``--export_format`` choice, its suffix to the
    artifacts table, and its runner to the parity checks and tools.

The command-line tools are installed as ``pocketflow-summary``, ``pocketflow-deploy``...
(docs/tools.md). Importing this module needs torch only (no onnx, no executorch).
"""
from compression.graph.ops import register_op
from compression.graph.pruners import (ChannelwisePruner, LayerPruner, MixingPruner,
                                       PassthroughPruner, ReaderPruner, register_pruner)
from compression.quantization.quantizers import register_weight_quantizer
from compression.selection.criteria import SelectionOptions, register_selection
from compression.selection.residual_groups import register_group_criterion
from compression.surgery.inference import fold_batchnorm
from datasets.base import InMemoryImageDataset
from datasets.cifar10 import Cifar10
from datasets.errors import DataError
from datasets.fmnist import FashionMnist
from datasets.ilsvrc12 import Ilsvrc12
from deployment.formats import DeployFormat, register_format
from learners.api import Result, compress, evaluate, load_model
from learners.base import Learner, Result as LearnerResult
from learners.launch import entry
from learners.registry import list_learners, register_learner
from nets.abstract_model_helper import AbstractModelHelper, HelperConfig, ImageClassificationHelper
from nets.helpers import register_helper
from nets.pocketflow_helper import PocketFlowModelHelper
from nets.registry import net_spec, register_net
from utils.config import check, nested, option
from utils.malloc import tune_malloc
from utils.model_io import register_spec_transform

__all__ = [
    # use
    "compress", "evaluate", "load_model", "Result", "list_learners", "fold_batchnorm",
    "tune_malloc", "entry",
    # your network, helper and data
    "register_net", "net_spec", "register_helper", "AbstractModelHelper",
    "ImageClassificationHelper", "HelperConfig", "FashionMnist", "Cifar10", "Ilsvrc12",
    "InMemoryImageDataset", "DataError", "PocketFlowModelHelper",
    # options
    "option", "nested", "check",
    # learners
    "register_learner", "Learner", "LearnerResult",
    # channel pruning, selection, quantization, artifacts
    "register_pruner", "LayerPruner", "ReaderPruner", "ChannelwisePruner", "PassthroughPruner",
    "MixingPruner", "register_op", "register_selection", "SelectionOptions",
    "register_group_criterion", "register_weight_quantizer", "register_spec_transform",
    "register_format", "DeployFormat",
]
