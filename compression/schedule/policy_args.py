"""Distiller's policy ``args`` (``pruner: {instance_name: p, args: {...}}``, Distiller's
``PruningPolicy.__init__``, distiller/policy.py:118-134): which are accepted, with which values,
and for which pruner classes.

- ``keep_mask``, ``mask_on_forward_only``, ``mask_gradients``, ``fold_batchnorm``: any value
  (masks are weight parametrizations, kept to the end and baked).
- ``mini_batch_pruning_frequency: N`` and ``skip_first_minibatch``: the pruner's mask is
  recomputed within its active epochs (Distiller's ``PruningPolicy.on_minibatch_begin``,
  distiller/policy.py:212-232); only for the pruners that recompute a mask at any step
  (``MINIBATCH_CLASSES``).
- ``use_double_copies``: the dense weights are trained while the forward uses the masked ones;
  only for ``SplicingPruner``, whose masks can regrow (``compression.schedule.splicing``).
- ``discard_masks_at_minibatch_end``: refused (a per-mini-batch mask dropped after the step is a
  regulariser, not a pruning decision; the final model here is the masked one).
"""
from __future__ import annotations

import yaml

from compression.schedule.yaml_nodes import Where, mapping, plain

# kind -> key -> the values that keep Distiller's meaning here (None: any)
POLICY_ARGS: dict[str, dict[str, tuple | None]] = {
    "pruner": {"keep_mask": None, "mask_on_forward_only": None, "mask_gradients": None,
               "use_double_copies": None, "mini_batch_pruning_frequency": None,
               "discard_masks_at_minibatch_end": (False,), "skip_first_minibatch": None,
               "fold_batchnorm": None},
    "regularizer": {"keep_mask": None},
}
ARGS_WHY = {"discard_masks_at_minibatch_end": "a mask discarded after every mini-batch is a "
                                              "regulariser (DropFilter-like, Distiller uses it with "
                                              "BernoulliFilterPruner); masks here persist until the "
                                              "weights are baked"}
# pruner classes whose mask may be recomputed at any mini-batch of an active epoch
MINIBATCH_CLASSES = ("AutomatedGradualPruner", "SplicingPruner")
# arg -> (the classes it applies to, the value meaning "off", why the others refuse it)
CLASS_ARGS = {
    "mini_batch_pruning_frequency": (MINIBATCH_CLASSES, 0, "only AutomatedGradualPruner and "
                                     "SplicingPruner recompute their masks within an epoch here; "
                                     "the other pruners fire when their epoch begins"),
    "skip_first_minibatch": (MINIBATCH_CLASSES, False, "only AutomatedGradualPruner and "
                             "SplicingPruner defer their first mask to the second mini-batch here"),
    "use_double_copies": (("SplicingPruner",), False, "the other pruners' masks never regrow: a "
                          "masked weight gets no update here (use SplicingPruner for dense "
                          "weights behind a mask)"),
    "fold_batchnorm": (None, False, "SplicingPruner's thresholds come from the statistics of the "
                       "weights themselves"),
}


def parse_args(file: str, kind: str, vnode: yaml.Node, path: str) -> tuple[dict, dict]:
    """The ``args`` mapping of a ``kind`` policy: (key -> value, key -> Where of the value)."""
    valid = POLICY_ARGS.get(kind, {})
    args, wheres = {}, {}
    for key, (k, v) in mapping(file, vnode, f"{path}.args").items():
        value = plain(v)
        if key not in valid:
            raise Where.of(file, k, f"{path}.args").error(
                f"unknown argument {key!r} of a {kind} policy; valid: {', '.join(valid) or 'none'}")
        where = Where.of(file, v, f"{path}.args.{key}")
        if valid[key] is not None and value not in valid[key]:
            raise where.error(f"only {valid[key][0]!r} is supported, got {value!r} ({ARGS_WHY[key]})")
        if key == "mini_batch_pruning_frequency" and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise where.error(f"expected an integer >= 0 (mini-batches between mask updates; 0: "
                              f"none), got {value!r}")
        args[key], wheres[key] = value, where
    return args, wheres


def check_class_args(cls: str, args: dict, wheres: dict) -> None:
    """The args a pruner of class ``cls`` cannot honour, refused at their value."""
    for key, (classes, off, why) in CLASS_ARGS.items():
        if key not in args or not args[key] or args[key] == off:
            continue
        applies = cls != "SplicingPruner" if classes is None else cls in classes
        if not applies:
            raise wheres[key].error(f"{args[key]!r} is not supported with {cls} ({why})")
    if cls == "SplicingPruner" and args.get("mask_gradients") and not args.get("mask_on_forward_only"):
        # distiller/policy.py:128-129
        raise wheres["mask_gradients"].error("mask_gradients needs mask_on_forward_only: True "
                                             "(Distiller: they are mutually exclusive otherwise)")
