"""pocketflow-torch's Python API (see ``learners.api`` and the README):

    from pocketflow_torch import compress, load_model
    result = compress(model, train_data, eval_data, "chn-pruned-rmt", prune_ratio=0.5)

For serving a result in eager PyTorch: ``tune_malloc()`` once at the start of the process and
``fold_batchnorm(model)`` (docs/speed.md).
"""
from compression.surgery.inference import fold_batchnorm
from learners.api import Result, compress, evaluate, load_model
from learners.registry import list_learners
from utils.malloc import tune_malloc

__all__ = ["compress", "evaluate", "load_model", "Result", "list_learners", "fold_batchnorm",
           "tune_malloc"]
