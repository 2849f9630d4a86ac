"""pocketflow-torch's Python API (see ``learners.api`` and the README):

    from pocketflow_torch import compress, load_model
    result = compress(model, train_data, eval_data, "chn-pruned-rmt", prune_ratio=0.5)
"""
from learners.api import Result, compress, evaluate, load_model
from learners.registry import list_learners

__all__ = ["compress", "evaluate", "load_model", "Result", "list_learners"]
