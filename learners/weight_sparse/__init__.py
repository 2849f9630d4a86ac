"""``--learner=weight-sparse``: fine-grained magnitude pruning with masks.

Modules: ``learner``, ``config`` (``--ws_*``), ``schedule`` (the mask schedule as a callback of
the training loop), ``search_env`` (the DDPG environment of per-layer sparsity).
"""
