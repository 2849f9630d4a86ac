"""Surgery: a selection made physical, and models rewritten for serving.

    from compression.surgery import thin, fold_batchnorm
    thinned, spec = thin(pruned, layers, keep, spec)   # really smaller, same function
    serving = fold_batchnorm(thinned)                  # BN folded into the conv before it

``thin`` turns per-reader kept input channels into smaller layers along the channel graph
(``compression.graph``), records the new shapes as a spec transform (a saved model rebuilds
without this code) and, by default, removes the output channels nothing reads afterwards.

Modules:

- ``picks``: ``Gather*`` / ``Scatter*`` modules that pick channels around a layer, and their
  one-hot matrix form for deployment;
- ``thinning``: ``thin``, ``mask_inputs`` (the same selection as zeros), ``gathers_as_matrices``,
  ``gathers_folded`` (gathers as zero weight columns), ``kept_channels``;
- ``passes``: the structural passes kept only where a side-by-side timing finds them faster
  (dead-channel elimination, ``fold_gathers``) and the report's ``passes`` section;
- ``liveness``: which channels of each tensor a later op reads (the trace, backwards);
- ``dead_channels``: writers compute only the channels read later; ``report`` measures what
  is left (liveness where it is exact, else the probe);
- ``unread``: the same question answered by perturbation, independent of the graph (the
  report's ``unread_channels`` where liveness is not exact, the tests' probe);
- ``inference``: ``fold_batchnorm``, the eager serving form.
"""
from utils.lazy import lazy_exports

_EXPORTS = {
    "GatherConv1d": "picks", "GatherConv2d": "picks", "GatherLinear": "picks",
    "gather_class": "picks", "is_gather": "picks", "is_scatter": "picks",
    "as_matrix_modules": "picks",
    "thin": "thinning", "mask_inputs": "thinning", "gathers_as_matrices": "thinning",
    "kept_channels": "thinning", "in_channels": "thinning", "gathers_folded": "thinning",
    "PassTimer": "passes", "pass_timer": "passes", "fold_gathers": "passes",
    "eliminate": "dead_channels", "unread_outputs": "dead_channels",
    "liveness_of": "dead_channels", "Liveness": "liveness",
    "unread_channels": "unread", "wasted_flops": "unread",
    "fold_batchnorm": "inference",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
