"""The channel graph: which channels of a model must be removed together, and who reads them.

    from compression.graph import analyse, choose_layers
    layers = analyse(model, input_shape)                  # every prunable reader, in order
    chosen = choose_layers(layers, skip_first=True, skip_last=False, skip_names=[])

``analyse`` traces the model with torch.fx (modules with a registered pruner are leaves),
gives every channel of every tensor an id, merges the ids that must go together (residual
sums, SE gates, concatenations) and lists the conv / linear layers whose input channels a
learner may prune (``PrunableLayer``; ``graph_of(layers)`` is their ``ChannelGraph``). A new
layer type is one pruner class (``register_pruner``); a module without one keeps its channels
whole and is named in the log.

Modules, read in this order:

- ``ops``: the fx trace and its shapes, and the op table: what every functional op and tensor
  method does to channels (dim 1), shared by the graph builder and dead-channel liveness;
  ``unknown_ops`` (the ops of a trace without a rule);
- ``channel_maps``: where the channels of a reshaped / transposed / permuted tensor came from
  (a channel shuffle, a flatten before a linear layer), followed by liveness;
- ``pruners``: one pruner class per module type (role, how it shrinks, its spec shape);
- ``channel_graph``: ``ChannelGraph``, the ids (union-find), writers, followers, readers, and
  ``plan(keep)``, what survives a selection;
- ``builder``: builds a ``ChannelGraph`` from a trace, op by op;
- ``layers``: the learners' view, ``PrunableLayer``, ``analyse``, ``choose_layers`` (skip rules).
"""
from utils.lazy import lazy_exports

_EXPORTS = {
    "GraphError": "ops", "trace": "ops", "shaped_graph": "ops", "op_kind": "ops",
    "unknown_ops": "ops", "register_op": "ops",
    "register_pruner": "pruners", "pruner_for": "pruners", "ChannelwisePruner": "pruners",
    "ReaderPruner": "pruners", "MixingPruner": "pruners", "PassthroughPruner": "pruners",
    "LayerPruner": "pruners", "registered_types": "pruners",
    "ChannelGraph": "channel_graph",
    "build_graph": "builder",
    "PrunableLayer": "layers", "analyse": "layers", "graph_of": "layers",
    "choose_layers": "layers",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
